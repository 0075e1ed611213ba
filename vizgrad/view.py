"""Views of a graph: modules collapsed into boxes, repeated instances folded, the detail chosen to fit a budget.

A view is itself a :class:`~vizgrad.graph.Graph`, so the DOT builder, the
layout cache and the painter take it as they take a traced graph. Its nodes
are the op nodes left visible and one node per collapsed module (kind
``module``) or fold of repeated instances (kind ``fold``); its edges bundle
the original edges that cross between the same two drawn items. What each
drawn item stands for (which original nodes, edges and instances) is the
view's :class:`ViewPlan`, kept with the view graph; the painter reads the
gradients of a box or bundle from the rows of the original graph's nodes
and edges.

Scopes are module *instances*: a module called once per time step has one
scope per call (``lstm1@5``), a module called once has its path as key
(``model.h.3``). A node belongs to the scopes of the calls around the one that
made it; a parameter to the innermost scope, within its owner, that holds
every op using it (one LSTMCell's weights serve all its calls, so they sit
beside the calls, not inside call 0).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from vizgrad.errors import UsageError
from vizgrad.graph import EDGE_KINDS, Edge, Graph, ModuleInfo, Node, short_op

__all__ = ["DEFAULT_MAX_NODES", "MAX_BARS", "ViewOptions", "ViewPlan", "Box", "view_of", "scope_keys"]

DEFAULT_MAX_NODES = 150
"""Drawn items (op nodes, module boxes and folds) the default view stays within."""

MAX_BARS = 48
"""Bars in a fold's strip; more instances than this share a bar (it shows the largest of them)."""

BOX_KINDS = ("module", "fold")
"""Node kinds of a view's boxes: a collapsed module instance, a fold of repeated instances."""

UNFOLD_ALL = 16
"""Unfolding a fold of up to this many instances shows every one of them."""
UNFOLD_ENDS = 6
"""Unfolding a longer fold shows this many instances at each end and folds the middle ones (which unfold in turn)."""

CHAIN_MIN = 16
"""Ops a repeated chain outside modules must have to fold (as a module called in a loop does)."""
CHAIN_PERIOD = 8
"""The longest repeating unit of ops a chain is folded by."""
BODY_PERIOD = 64
"""The most ops a loop body may have to fold by the levels of its ops (see :meth:`_Scopes._loop_body`)."""

_NUMBERED = re.compile(r"^(.*)\.(\d+)$")  # an item of a container: ``model.h.3``


@dataclasses.dataclass(frozen=True)
class ViewOptions:
    """What a view shows.

    Attributes:
        depth: Modules nested less deep than this are drawn open (a top-level
            module has depth 0, so ``depth=0`` draws every top-level module
            as one box); ``None`` picks the most detailed view that fits
            ``max_nodes``.
        max_nodes: The budget of drawn items for ``depth=None``.
        expand: Module paths or scope keys drawn open whatever the depth (with
            the modules around them). A path with several calls opens them all;
            ``lstm1@5`` opens call 5 only. A name may leave out the start of a
            path: ``h.3`` is ``model.transformer.h.3``, ``attn`` every block's.
        collapse: Paths or keys drawn as one box whatever the depth.
        unfold: Folds drawn as their instances: a fold's key, its module path
            or the container its items are in (``model.transformer.h``).
        fold: Fold repeated instances at all (``False``: never).
        clicked: What a report's reader opened, closed and unfolded on top
            (full keys, matched exactly: ``layers.1`` is not ``decoder.layers.1``).
    """

    depth: int | None = None
    max_nodes: int = DEFAULT_MAX_NODES
    expand: tuple[str, ...] = ()
    collapse: tuple[str, ...] = ()
    unfold: tuple[str, ...] = ()
    fold: bool = True
    clicked: ViewState | None = None

    def __post_init__(self) -> None:
        if self.depth is not None and (not isinstance(self.depth, int) or self.depth < 0):
            raise UsageError(f"depth must be a whole number >= 0 or None, got {self.depth!r}")
        if not isinstance(self.max_nodes, int) or self.max_nodes < 1:
            raise UsageError(f"max_nodes must be a whole number >= 1, got {self.max_nodes!r}")
        for name in ("expand", "collapse", "unfold"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(sorted({str(v) for v in value})))


@dataclasses.dataclass
class _Scope:
    """One module instance: a call of a module (or a container inside a call), and what is in it."""

    path: str
    instance: int
    info: ModuleInfo
    parent: _Scope | None
    depth: int
    order: tuple[int, int]  # the module's place in the tree, then the instance: siblings sort by it
    key: str = ""
    synthetic: bool = False  # a run of a repeated op chain outside modules, not a module call
    children: list[_Scope] = dataclasses.field(default_factory=list)
    nodes: list[int] = dataclasses.field(default_factory=list)  # positions of the nodes directly inside
    signature: Any = None

    def ancestors(self) -> Iterable[_Scope]:
        scope: _Scope | None = self
        while scope is not None:
            yield scope
            scope = scope.parent


@dataclasses.dataclass
class _Fold:
    """Sibling instances drawn as one box: the calls of one module, or like items of a container."""

    key: str
    members: list[_Scope]
    by_path: bool  # calls of one module (else numbered items of a container)

    @property
    def container(self) -> str:
        return self.members[0].path if self.by_path else _NUMBERED.match(self.members[0].path).group(1)


@dataclasses.dataclass(frozen=True)
class Box:
    """A drawn box: what a ``module`` or ``fold`` node of a view stands for.

    Attributes:
        id: Its node id in the view (``b0``, ``b1``, ...).
        key: Its scope key (``model.h.3``, ``lstm1@5``) or fold key
            (``model.transformer.h.0-11``, ``lstm1``).
        kind: ``module`` or ``fold``.
        type: The module class name.
        count: Instances inside (1 for a module box).
        members: Positions (in the original graph) of every node inside.
        recurrent: A fold of one module's calls that pass gradients to one another (a loop over time).
        chain: A fold of a repeated run of ops outside modules (its instances: one period of the run).
    """

    id: str
    key: str
    kind: str
    type: str
    count: int
    members: tuple[int, ...]
    recurrent: bool = False
    chain: bool = False


@dataclasses.dataclass
class ViewPlan:
    """How a view graph was made from a graph, for drawing and painting it.

    Attributes:
        source: The original graph.
        options: The options it was made with.
        depth: The depth it was drawn at (the one picked when ``options.depth`` is ``None``).
        boxes: The view's boxes, by node id.
        bundles: For each view edge key ``src:slot``, the indices into
            ``source.edges`` of the edges it draws.
        clusters: The open scopes, drawn as Graphviz clusters: ``(key, label, parent key or None)``,
            parents first.
        cluster_of: The cluster each view node is drawn in (absent: none).
        visible: Drawn items: op nodes, boxes and folds (clusters are not counted).
        folding: Whether it folds repeats (a default view that draws the graph whole does not).
        item_ids: The view's node ids, by position.
        item_of: For each node of ``source`` (by position), the view node (by
            position) it is drawn as or inside; ``-1`` for none.
        instance_of: For each node of ``source`` inside a fold, which of the
            fold's instances it is in; ``-1`` elsewhere.
    """

    source: Graph
    options: ViewOptions
    depth: int | None
    boxes: dict[str, Box]
    bundles: dict[str, tuple[int, ...]]
    clusters: list[tuple[str, str, str | None]]
    cluster_of: dict[str, str]
    visible: int
    folding: bool = True  # whether it folds repeats (the default view of a graph that fits draws it whole)
    item_ids: tuple[str, ...] = ()
    item_of: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    instance_of: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))


class _Scopes:
    """The module instances of one graph as a tree, with each node's place in it."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.infos = {info.path: info for info in graph.modules}
        self.rank = {info.path: at for at, info in enumerate(graph.modules)}
        self.roots: list[_Scope] = []  # top-level scopes
        self.loose: list[int] = []  # nodes in no scope
        self.by_id: dict[tuple[str, int], _Scope] = {}
        self.scope_of: list[_Scope | None] = [None] * len(graph.nodes)
        self._links()
        self._place()
        self._fold_chains()
        self._name()
        for scope in self.by_id.values():
            scope.children.sort(key=lambda s: s.order)
        self.roots.sort(key=lambda s: s.order)

    # -- building -----------------------------------------------------------------------------------
    def _scope(self, path: str, instance: int) -> _Scope | None:
        """The scope of instance ``instance`` of ``path`` and of the instances around it, made on first use."""
        found = self.by_id.get((path, instance))
        if found is not None:
            return found
        info = self.infos.get(path)
        if info is None:
            return None
        # Which instance of the parent holds this one: calls map through ``within``; a
        # container without calls is part of the instance of the module around it.
        outer = info.instance_of(instance) if info.calls else instance
        parent = None
        if info.parent is not None and outer >= 0:
            parent_info = self.infos.get(info.parent)
            if parent_info is not None:
                parent = self._scope(info.parent, outer)
        scope = _Scope(path, instance, info, parent, 0 if parent is None else parent.depth + 1,
                       (self.rank.get(path, 0), instance))
        self.by_id[(path, instance)] = scope
        (parent.children if parent is not None else self.roots).append(scope)
        return scope

    def _links(self) -> None:
        """The graph's grad edges by node position, both ways, and the op each saved tensor belongs to."""
        position = self.graph.position
        self.users: dict[int, list[int]] = {}  # node -> the ops using its output
        self.uses: dict[int, list[int]] = {}  # op -> the nodes it uses
        self.saved_of: dict[int, int] = {}
        for edge in self.graph.edges:
            if edge.kind == "grad":
                self.users.setdefault(position[edge.dst], []).append(position[edge.src])
                self.uses.setdefault(position[edge.src], []).append(position[edge.dst])
            elif edge.kind == "saved":
                self.saved_of[position[edge.src]] = position[edge.dst]

    def _place(self) -> None:
        graph = self.graph
        consumers, saved_of = self.users, self.saved_of
        later: list[int] = []
        for at, node in enumerate(graph.nodes):
            if node.kind in ("leaf", "saved", "base", "root"):
                later.append(at)
            elif node.module is not None:
                self.scope_of[at] = self._scope(node.module, node.call)
        for at in later:
            node = graph.nodes[at]
            if node.kind == "leaf" and node.module is not None:
                self.scope_of[at] = self._leaf_scope(node.module, [self.scope_of[c] for c in consumers.get(at, ())])
            elif node.kind == "saved" and at in saved_of:
                self.scope_of[at] = self.scope_of[saved_of[at]]
        for at, scope in enumerate(self.scope_of):
            (scope.nodes if scope is not None else self.loose).append(at)

    def _fold_chains(self) -> None:
        """Long runs of a repeated op chain (``y = y * w`` a thousand times) as the instances of a made-up scope.

        A chain is a path of ops, its spine, each used by the next alone. A
        spine op may also use side branches: ops used by it alone, with all
        they alone feed (``h = tanh(x[t] @ w + h @ u)``: the ``x[t] @ w``
        beside the recurrence). Of an op's private inputs the one with the
        longest private history carries the spine on. Its repeated part (the
        longest run with a period of up to :data:`CHAIN_PERIOD` spine ops, side
        branches alike, at least :data:`CHAIN_MIN` long) becomes one instance
        per period, so that it folds like a module called in a loop.
        Parameters used only within one instance go into it. A second pass
        looks again among the ops left, not counting users already folded;
        what is still left may fold as a loop body (:meth:`_loop_body`).
        """
        ops = {at for at, node in enumerate(self.graph.nodes) if node.kind in ("op", "custom")}
        number = 0
        for parent, nodes in [(None, self.loose)] + [(scope, scope.nodes) for scope in list(self.by_id.values())]:
            folded: set[int] = set()
            # A second pass over what the first left: an op also used by a folded chain (h_t, used by the next
            # step and by the loss summed over time) carries a spine of its own among the rest.
            for _ in range(2):
                if len(nodes) < CHAIN_MIN:
                    break
                users = self.users if not folded else \
                    {at: [u for u in self.users.get(at, ()) if u not in folded] for at in nodes}
                made_now = self._chains_of(nodes, ops, users)
                if not made_now:
                    break
                number = self._add_chains(parent, nodes, made_now, number, self.users)
                folded.update(at for chain, _, sides in made_now for at in chain)
                folded.update(s for chain, _, sides in made_now for at in chain for s in sides[at])
            if len(nodes) >= CHAIN_MIN:
                body = self._loop_body(nodes, ops)
                if body is not None:
                    number = self._add_chains(parent, nodes, [body], number, self.users)

    def _loop_body(self, nodes: list[int], ops: set[int]) -> tuple[list[int], int, dict[int, list[int]]] | None:
        """The ops of a loop no chain holds (state carried in several tensors: an LSTM's h and c, a residual
        stream also fed to a branch), as one run of periods: ``(ops, period, {})``, or ``None``.

        A loop's body adds the same ops at the same depths each time round: sorted by their level (the longest
        path from the graph's inputs) and op, the ops repeat with the body's length as the period. Each period
        of the longest such run (up to :data:`BODY_PERIOD` ops, three periods, :data:`CHAIN_MIN` ops) is an
        instance, cut where the levels fall (a body's last ops may sit in the next period, alike in each).
        """
        graph = self.graph
        level = _inputs_first(nodes, self.uses, lambda below: 1 + max(below, default=0))
        order = sorted((at for at in nodes if at in ops), key=lambda at: (level[at], graph.nodes[at].op, at))
        run = _periodic_run([graph.nodes[at].op for at in order], BODY_PERIOD)
        if run is None:
            return None
        start, stop, period = run
        firsts = [level[order[at]] for at in range(start, stop, period)]
        if any(later <= earlier for earlier, later in zip(firsts, firsts[1:])):
            return None  # alike ops side by side (a sum of 100 terms), not a loop going deeper each time round
        return list(reversed(order[start:stop])), period, {at: [] for at in order[start:stop]}

    def _chains_of(self, nodes: list[int], ops: set[int],
                   users: Mapping[int, list[int]]) -> list[tuple[list[int], int, dict[int, list[int]]]]:
        """The repeated chains among ``nodes`` (see :meth:`_fold_chains`): ``(spine run, period, side branches)``;
        ``users`` are the ops each node counts as using it."""
        graph, uses = self.graph, self.uses
        here = set(nodes)
        private = {at: [u for u in uses.get(at, ()) if u in ops and u in here and users.get(u) == [at]]
                   for at in nodes if at in ops}
        history = _private_history(private)
        following = {}  # spine op -> the private input that carries the spine on
        for at, inputs in private.items():
            if inputs:
                following[at] = max(inputs, key=lambda u: (history[u], -u))
        heads = set(following) - set(following.values())
        made: list[tuple[list[int], int, dict[int, list[int]]]] = []
        claimed: set[int] = set()
        # The longest spine first: a spine inside another one's side branch is then taken with that branch.
        for head in sorted(heads, key=lambda h: (-history[h], h)):
            if head in claimed:
                continue
            chain = [head]
            while chain[-1] in following:
                chain.append(following[chain[-1]])
            sides = {at: _side_branch(at, following.get(at), private) for at in chain}
            labels = [graph.nodes[at].op + "|" + ",".join(sorted(graph.nodes[s].op for s in sides[at]))
                      for at in chain]
            run = _periodic_run(labels)
            if run is not None:
                start, stop, period = run
                made.append((chain[start:stop], period, sides))
                claimed.update(chain[start:stop])
                claimed.update(s for at in chain[start:stop] for s in sides[at])
        return made

    def _add_chains(self, parent: _Scope | None, owner: list[int], chains: list[tuple[list[int], int,
                                                                                     dict[int, list[int]]]],
                    number: int, users: Mapping[int, list[int]]) -> int:
        """Makes the instances of repeated chains of one scope (in forward order: the period nearest the inputs
        first) and moves into each instance the parameters it alone uses. Returns the last chain number used."""
        taken = set(self.infos) | {path for path, _ in self.by_id}
        prefix = f"{parent.path}." if parent is not None and parent.path else ""
        moved: set[int] = set()
        unit_of: dict[int, _Scope] = {}
        for chain, period, sides in chains:
            number += 1
            while f"{prefix}chain{number}" in taken:  # a module may be named so
                number += 1
            path = f"{prefix}chain{number}"
            taken.add(path)
            forward = list(reversed(chain))
            spines = [forward[k:k + period] for k in range(0, len(forward) - len(forward) % period, period)]
            names = list(dict.fromkeys(short_op(self.graph.nodes[at].op) for at in spines[0]))
            kind = "+".join(names[:3]) + ("+…" if len(names) > 3 else "")  # a loop body's label stays one line
            units = [[node for at in spine for node in (*sides[at], at)] for spine in spines]
            info = ModuleInfo(path, kind, len(units), parent.path if parent is not None else None)
            for k, unit in enumerate(units):
                scope = _Scope(path, k, info, parent, 0 if parent is None else parent.depth + 1,
                               (len(self.rank) + number, k), synthetic=True)
                scope.nodes = list(unit)
                for at in unit:
                    unit_of[at] = scope
                    self.scope_of[at] = scope
                moved.update(unit)
                self.by_id[(path, k)] = scope
                (parent.children if parent is not None else self.roots).append(scope)
        for at in owner:  # parameters used by one instance alone go with it
            if self.graph.nodes[at].kind == "leaf" and at not in moved:
                holders = {id(unit_of.get(u)): unit_of.get(u) for u in users.get(at, ())}
                if len(holders) == 1 and None not in holders.values():
                    scope = next(iter(holders.values()))
                    scope.nodes.append(at)
                    self.scope_of[at] = scope
                    moved.add(at)
        owner[:] = [at for at in owner if at not in moved]
        return number

    def _leaf_scope(self, owner: str, users: Sequence[_Scope | None]) -> _Scope | None:
        """The innermost scope holding every user of a parameter, no deeper than its owner's instance."""
        if not users or any(user is None for user in users):
            return None
        common: list[_Scope] = list(reversed(list(users[0].ancestors())))
        for user in users[1:]:
            chain = list(reversed(list(user.ancestors())))
            size = 0
            while size < min(len(common), len(chain)) and common[size] is chain[size]:
                size += 1
            del common[size:]
        # The owner and what holds it: its tree parents, and the paths its own path starts with (a module
        # never called, as the out_proj a MultiheadAttention reads only the weights of, is not in the tree).
        owner_line = {owner[:at] for at in range(len(owner)) if owner[at] == "."} | {owner, ""}
        path: str | None = owner
        while path is not None:
            owner_line.add(path)
            info = self.infos.get(path)
            path = info.parent if info is not None else None
        while common and common[-1].path not in owner_line:
            common.pop()
        return common[-1] if common else None

    def _name(self) -> None:
        """Keys: the path, with ``@k`` when the path has several instances in the graph."""
        self.instances = Counter(path for path, _ in self.by_id)
        for (path, instance), scope in self.by_id.items():
            scope.key = f"{path}@{instance}" if self.instances[path] > 1 else path
        self.by_key = {scope.key: scope for scope in self.by_id.values()}

    def under(self, key: str) -> set[str]:
        """The keys of the scopes inside the one keyed ``key`` (its calls' children too), itself included."""
        scope = self.by_key.get(key)
        return {key} if scope is None else {inner.key for inner in self.subtree(scope)}

    @staticmethod
    def subtree(scope: _Scope) -> Iterator[_Scope]:
        """``scope`` and every scope inside it."""
        stack = [scope]
        while stack:
            current = stack.pop()
            yield current
            stack.extend(current.children)

    # -- structure ------------------------------------------------------------------------------------
    def signature(self, scope: _Scope) -> Any:
        """What two scopes must share to fold together: class, ops inside and the children's signatures."""
        if scope.signature is None:
            ops = Counter((self.graph.nodes[at].op, self.graph.nodes[at].kind) for at in scope.nodes)
            scope.signature = (scope.info.type, tuple(sorted(ops.items())),
                               tuple(sorted(map(hash, (self.signature(child) for child in scope.children)))))
        return scope.signature

    def members(self, scope: _Scope) -> list[int]:
        """Every node inside ``scope``, its children's included."""
        return [at for inner in self.subtree(scope) for at in inner.nodes]

    def folds(self, children: Sequence[_Scope]) -> list[_Fold]:
        """The foldable groups among sibling scopes: the calls of one module, runs of like container items."""
        out: list[_Fold] = []
        by_path: dict[str, list[_Scope]] = {}
        for child in children:
            by_path.setdefault(child.path, []).append(child)
        items: dict[str, list[tuple[int, _Scope]]] = {}
        for path, group in by_path.items():
            if len(group) > 1:
                group.sort(key=lambda s: s.instance)
                # Keyed by the path when these are all its calls, else by the calls they are (unique).
                key = path if len(group) == self.instances[path] else f"{path}@{group[0].instance}-{group[-1].instance}"
                out.append(_Fold(key, group, True))
                continue
            match = _NUMBERED.match(path)
            if match is not None:
                items.setdefault(match.group(1), []).append((int(match.group(2)), group[0]))
        for container, numbered in items.items():
            numbered.sort(key=lambda pair: pair[0])
            run: list[tuple[int, _Scope]] = []
            for number, scope in numbered + [(-2, None)]:  # a sentinel ends the last run
                if run and scope is not None and number == run[-1][0] + 1 and \
                        self.signature(scope) == self.signature(run[-1][1]):
                    run.append((number, scope))
                    continue
                if len(run) > 1:
                    key = f"{container}.{run[0][0]}-{run[-1][0]}"
                    if self.instances[run[0][1].path] > 1:  # the container's module runs twice: which run
                        key += f"@{run[0][1].instance}"
                    out.append(_Fold(key, [s for _, s in run], False))
                run = [(number, scope)] if scope is not None else []
        return out


def _private_history(private: Mapping[int, list[int]]) -> dict[int, int]:
    """Per op: how many ops its private inputs reach, itself included."""
    return _inputs_first(private, private, lambda below: 1 + sum(below))


def _inputs_first(starts: Iterable[int], inputs: Mapping[int, Sequence[int]],
                  combine: Callable[[Iterator[int]], int]) -> dict[int, int]:
    """``combine(values of a node's inputs)`` for every node reached from ``starts``, its inputs' first.

    Iterative, with an explicit stack: chains and loops run 100,000 nodes deep.
    """
    value: dict[int, int] = {}
    for start in starts:
        if start in value:
            continue
        stack = [start]
        while stack:
            at = stack[-1]
            waiting = [u for u in inputs.get(at, ()) if u not in value]
            if waiting:
                stack.extend(waiting)
                continue
            stack.pop()
            value[at] = combine(value[u] for u in inputs.get(at, ()))
    return value


def _side_branch(at: int, spine_input: int | None, private: Mapping[int, list[int]]) -> list[int]:
    """The ops of ``at``'s private inputs other than ``spine_input``, with all they privately use (forward order)."""
    out: list[int] = []
    stack = [u for u in private.get(at, ()) if u != spine_input]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(private.get(node, ()))
    return out[::-1]


def _periodic_run(ops: Sequence[str], longest: int = CHAIN_PERIOD) -> tuple[int, int, int] | None:
    """The longest stretch of ``ops`` that repeats a unit of up to ``longest`` ops: ``(start, stop, period)``.

    ``None`` when no stretch of :data:`CHAIN_MIN` ops (and three periods) repeats.
    """
    best: tuple[int, int, int] | None = None
    for period in range(1, longest + 1):
        at = period
        while at < len(ops):
            if ops[at] != ops[at - period]:
                at += 1
                continue
            first = at - period  # ops[first:at + 1] repeats; see how far
            while at < len(ops) and ops[at] == ops[at - period]:
                at += 1
            length = (at - first) // period * period
            if length >= max(CHAIN_MIN, 3 * period) and (best is None or length > best[1] - best[0]):
                best = (first, first + length, period)
    return best


def _named(names: Sequence[str], *candidates: str) -> bool:
    """Whether a key or path is named: in full, or by its end after a dot (``h.3`` names ``model.h.3``)."""
    return any(candidate == name or candidate.endswith("." + name) for name in names for candidate in candidates)


def scope_keys(graph: Graph) -> list[str]:
    """Every scope key of ``graph`` (what ``expand`` and ``collapse`` take), parents first."""
    scopes = _scopes_of(graph)
    out: list[str] = []
    stack = list(reversed(scopes.roots))
    while stack:
        scope = stack.pop()
        out.append(scope.key)
        stack.extend(reversed(scope.children))
    return out


def module_scopes(graph: Graph) -> _Scopes:
    """The module instances of ``graph`` as a tree (made once per graph): what gradient health reads per call."""
    return _scopes_of(graph)


def _scopes_of(graph: Graph) -> _Scopes:
    scopes = graph.__dict__.get("_scopes")
    if scopes is None:
        scopes = _Scopes(graph)
        object.__setattr__(graph, "_scopes", scopes)
    return scopes


class _Drawing:
    """One choice of open scopes and folds, and what it draws."""

    def __init__(self, scopes: _Scopes, options: ViewOptions, depth: int | None, fold: bool) -> None:
        self.scopes = scopes
        self.options = options
        self.depth = depth
        self.fold = fold
        wanted = set()
        for scope in scopes.by_id.values():
            if self.asked("expand", scope.key, scope.path):
                wanted.update(id(s) for s in scope.ancestors())
        self.wanted = wanted  # opened on request, with what is around them
        self.unfolded: set[int] = set()  # instances of unfolded folds: boxes, whatever the depth, unless opened
        self.repeats: set[int] = set()  # every instance of a fold, folded or not
        self.items: list[tuple[str, Any]] = []  # ("node", position) | ("box", scope) | ("fold", [scopes], fold)
        self.clusters: list[tuple[_Scope, _Scope | None]] = []  # open scopes drawn, with their drawn parent
        self.cluster_of_item: list[_Scope | None] = []
        self._walk(None, scopes.loose, scopes.roots)

    def asked(self, action: str, *candidates: str) -> bool:
        """Whether the options ask ``action`` of one of these keys or paths: by name (an end of it will do)
        or by a click (the full key)."""
        names = getattr(self.options, action)
        if names and _named(names, *candidates):
            return True
        clicked = self.options.clicked
        return clicked is not None and any(candidate in getattr(clicked, action) for candidate in candidates)

    def _is_open(self, scope: _Scope) -> bool:
        if self.asked("collapse", scope.key, scope.path):
            return False
        if id(scope) in self.wanted:
            return True
        if id(scope) in self.unfolded:
            return False
        parent = scope.parent
        if parent is not None and id(parent) in self.wanted and (id(parent) in self.repeats or not self._by_depth(parent)):
            return False  # a module the default hides, opened on request, shows its children closed: a level at a time
        return self._by_depth(scope)

    def _by_depth(self, scope: _Scope) -> bool:
        return self.depth is None or scope.depth < self.depth

    def _add(self, item: tuple[str, Any], cluster: _Scope | None) -> None:
        self.items.append(item)
        self.cluster_of_item.append(cluster)

    def _walk(self, cluster: _Scope | None, nodes: Sequence[int], children: Sequence[_Scope]) -> None:
        for at in nodes:
            self._add(("node", at), cluster)
        folded: dict[int, _Fold] = {}  # instance -> the fold drawn for it
        if self.fold:
            for fold in self.scopes.folds(children):
                self.repeats.update(id(m) for m in fold.members)
                for part in self._parts(fold):
                    for member in part.members:
                        folded[id(member)] = part
        seen: set[str] = set()
        for child in children:
            part = folded.get(id(child))
            if part is not None:
                if part.key not in seen:
                    seen.add(part.key)
                    self._add(("fold", part), cluster)
            elif child.synthetic and id(child) not in self.unfolded:  # a chain's period not folded: its ops as they are
                self._walk(cluster, child.nodes, child.children)
            elif self._is_open(child):
                self.clusters.append((child, cluster))
                self._walk(child, child.nodes, child.children)
            else:
                self._add(("box", child), cluster)

    def _parts(self, fold: _Fold) -> list[_Fold]:
        """What stays folded of a fold: the runs between members opened on request, less what is unfolded.

        Unfolding shows the instances as boxes: all of them up to
        :data:`UNFOLD_ALL`, else the first and last :data:`UNFOLD_ENDS`
        around a fold of the middle ones (which unfolds in turn).
        """
        whole = self.asked("unfold", fold.key, fold.container) or \
            any(self.asked("unfold", m.key, m.path) for m in fold.members)
        parts: list[_Fold] = []
        run: list[_Scope] = []
        for member in fold.members + [None]:
            if member is not None and id(member) not in self.wanted:
                run.append(member)
                continue
            if len(run) > 1:
                part = _Fold(fold.key if len(run) == len(fold.members) else _part_key(fold, run), run, fold.by_path)
                parts.extend(self._unfolded(part, whole))
            elif run:
                self.unfolded.add(id(run[0]))  # one instance left between opened ones: a box of its own
            run = []
        return parts

    def _unfolded(self, part: _Fold, asked: bool) -> list[_Fold]:
        """``part`` itself, or, when it is unfolded, its instances as boxes and what stays folded of a long one."""
        while asked or self.asked("unfold", part.key):
            if len(part.members) <= UNFOLD_ALL:
                self.unfolded.update(id(m) for m in part.members)
                return []
            ends = part.members[:UNFOLD_ENDS] + part.members[-UNFOLD_ENDS:]
            self.unfolded.update(id(m) for m in ends)
            middle = part.members[UNFOLD_ENDS:-UNFOLD_ENDS]
            part = _Fold(_part_key(part, middle), middle, part.by_path)
            asked = False
        return [part]

    @property
    def visible(self) -> int:
        return len(self.items)


def _part_key(fold: _Fold, run: Sequence[_Scope]) -> str:
    """The key of a run of a fold's members: ``lstm1@4-992``, ``model.h.0-2``."""
    if fold.by_path:
        return f"{fold.members[0].path}@{run[0].instance}-{run[-1].instance}"
    first, last = (_NUMBERED.match(s.path).group(2) for s in (run[0], run[-1]))
    return f"{fold.container}.{first}-{last}"


def _choose(scopes: _Scopes, options: ViewOptions) -> _Drawing:
    """The drawing ``options`` ask for: at their depth, or the most detailed one within ``max_nodes``."""
    if options.depth is not None:
        return _Drawing(scopes, options, options.depth, options.fold)
    everything = _Drawing(scopes, options, None, False)
    if everything.visible <= options.max_nodes or not scopes.by_id:
        return everything
    deepest = max((s.depth for s in scopes.by_id.values()), default=0) + 1
    best = None
    for depth in range(deepest, -1, -1):
        drawing = _Drawing(scopes, options, depth, options.fold)
        if drawing.visible <= options.max_nodes:
            return drawing
        best = drawing
    return best  # nothing fits: the least detailed


def view_of(graph: Graph, options: ViewOptions | None = None) -> Graph:
    """The view of ``graph`` that ``options`` ask for, as a graph (its plan: :func:`plan_of`).

    Graphs without modules, and views that collapse and fold nothing, are
    ``graph`` itself. Views are kept with the graph, one per options.
    """
    options = options or ViewOptions()
    if not graph.modules and len(graph.nodes) <= max(options.max_nodes, CHAIN_MIN):
        return graph  # nothing to collapse, and too small to fold chains of
    views = graph.__dict__.get("_views")
    if views is None:
        views = {}
        object.__setattr__(graph, "_views", views)
    found = views.get(options)
    if found is None:
        found = views[options] = _build(graph, options)
    return found


def plan_of(graph: Graph) -> ViewPlan | None:
    """The :class:`ViewPlan` of a view graph; ``None`` for a graph drawn as it is."""
    return graph.__dict__.get("_view_plan")


def _build(graph: Graph, options: ViewOptions) -> Graph:
    scopes = _scopes_of(graph)
    drawing = _choose(scopes, options)
    if not drawing.clusters and all(kind == "node" for kind, _ in drawing.items):
        return graph
    nodes = graph.nodes
    item_of = np.full(len(nodes), -1, dtype=np.int64)
    instance_of = np.full(len(nodes), -1, dtype=np.int64)  # for nodes inside folds: which instance
    view_nodes: list[Node] = []
    boxes: dict[str, Box] = {}
    cluster_of: dict[str, str] = {}
    by_path_folds: set[str] = set()
    for at, ((kind, what), cluster) in enumerate(zip(drawing.items, drawing.cluster_of_item)):
        if kind == "node":
            item_of[what] = at
            node = nodes[what]
            view_nodes.append(node)
        else:
            box_id = f"b{len(boxes)}"
            if kind == "box":
                members = scopes.members(what)
                box = Box(box_id, what.key, "module", what.info.type, 1, tuple(members))
            else:
                instances = [scopes.members(m) for m in what.members]
                members = [p for inst in instances for p in inst]
                for k, inst in enumerate(instances):
                    instance_of[inst] = k
                box = Box(box_id, what.key, "fold", what.members[0].info.type, len(what.members), tuple(members),
                          chain=what.members[0].synthetic)
                if what.by_path:
                    by_path_folds.add(box_id)
            item_of[list(box.members)] = at
            boxes[box_id] = box
            view_nodes.append(Node(box_id, box.type, box.kind, name=box.key))
        if cluster is not None:
            cluster_of[view_nodes[-1].id] = cluster.key
    ids = [n.id for n in view_nodes]
    arrays = _EdgeArrays.of(graph)
    a, b = item_of[arrays.src], item_of[arrays.dst]
    drawn = (a >= 0) & (b >= 0)
    inner = drawn & (a == b)
    # One module's calls handing gradients to one another: a loop.
    looping = inner & (instance_of[arrays.src] != instance_of[arrays.dst])
    for item in np.unique(a[looping]).tolist():
        if ids[item] in by_path_folds:
            boxes[ids[item]] = dataclasses.replace(boxes[ids[item]], recurrent=True)
    crossing = np.flatnonzero(drawn & (a != b))
    group = (a[crossing] * len(view_nodes) + b[crossing]) * len(EDGE_KINDS) + arrays.kind[crossing]
    order = np.argsort(group, kind="stable")  # each bundle's edges in graph order
    groups, starts = np.unique(group[order], return_index=True)
    edges: list[Edge] = []
    keys: dict[str, tuple[int, ...]] = {}
    next_slot: Counter[str] = Counter()
    bundles = sorted(zip(groups.tolist(), (tuple(m.tolist()) for m in np.split(crossing[order], starts[1:]))),
                     key=lambda bundle: bundle[1][0])  # in the graph's order of their first edges
    for code, members in bundles:
        pair, kind = divmod(code, len(EDGE_KINDS))
        src, dst = ids[pair // len(view_nodes)], ids[pair % len(view_nodes)]
        first = graph.edges[members[0]]
        if src not in boxes and len(members) == 1:
            slot, output = first.slot, first.output  # one original edge: its own key and paint
        else:
            # A bundle out of an op node gets a slot past the op's own, so its key is no edge's of the graph.
            slot, output = next_slot[src] + arrays.first_free.get(src, 0), 0
        next_slot[src] += 1
        edges.append(Edge(src, dst, slot, output, EDGE_KINDS[kind]))
        keys[f"{src}:{slot}"] = members
    roots = tuple(root for root in graph.roots
                  if item_of[graph.position[root]] >= 0 and ids[item_of[graph.position[root]]] == root)
    clusters = [(scope.key, _cluster_label(scope), None if parent is None else parent.key)
                for scope, parent in drawing.clusters]
    view = Graph(tuple(view_nodes), tuple(edges), roots)
    plan = ViewPlan(graph, options, drawing.depth, boxes, keys, clusters, cluster_of, drawing.visible,
                    drawing.fold, tuple(ids), item_of, instance_of)
    object.__setattr__(view, "_view_plan", plan)
    return view


@dataclasses.dataclass(frozen=True)
class _EdgeArrays:
    """A graph's edges as arrays (positions of their ends, kinds), made once per graph for its views."""

    src: np.ndarray
    dst: np.ndarray
    kind: np.ndarray  # index into EDGE_KINDS
    first_free: dict[str, int]  # per source node: the first slot no edge of it has

    @classmethod
    def of(cls, graph: Graph) -> _EdgeArrays:
        found = graph.__dict__.get("_edge_arrays")
        if found is None:
            position = graph.position
            first_free: dict[str, int] = {}
            for edge in graph.edges:
                first_free[edge.src] = max(first_free.get(edge.src, 0), edge.slot + 1)
            kinds = {kind: k for k, kind in enumerate(EDGE_KINDS)}
            found = cls(np.array([position[e.src] for e in graph.edges], dtype=np.int64),
                        np.array([position[e.dst] for e in graph.edges], dtype=np.int64),
                        np.array([kinds.get(e.kind, 0) for e in graph.edges], dtype=np.int64), first_free)
            object.__setattr__(graph, "_edge_arrays", found)
        return found


def _cluster_label(scope: _Scope) -> str:
    name = scope.key.rpartition(".")[2] if scope.key else scope.info.type
    return f"{name} · {scope.info.type}" if name != scope.info.type else name


def short_name(key: str) -> str:
    """The last part of a scope or fold key, enough to tell a box from its siblings (``attn``, ``h.0-11``)."""
    head, _, last = key.rpartition(".")
    if re.match(r"^\d", last) and head:
        return f"{head.rpartition('.')[2]}.{last}"
    return last or key


def bar_buckets(count: int) -> list[tuple[int, int]]:
    """How a fold of ``count`` instances is cut into at most :data:`MAX_BARS` bars: ``(start, stop)`` each."""
    bars = min(count, MAX_BARS)
    edges = [math.floor(k * count / bars) for k in range(bars + 1)]
    return [(edges[k], edges[k + 1]) for k in range(bars)]


# -- the states a report can be put in --------------------------------------------------------------------------

MAX_STATES = 24
"""View states a report prepares (each one a Graphviz layout per graph shape), nearest to the default first."""
MAX_STATE_ITEMS = MAX_STATES * DEFAULT_MAX_NODES
"""Drawn items, summed over the states, a report lays out at most: a view drawn whole is not also drawn
with each of its modules closed in turn."""

ACTIONS = ("expand", "collapse", "unfold")
"""What a click does to a drawn item: open a module box, close an open module, unfold a fold."""


@dataclasses.dataclass(frozen=True)
class ViewState:
    """A view as the reader of a report makes it: what was opened, closed and unfolded on top of the default.

    Attributes:
        expand: Keys opened (boxes clicked).
        collapse: Keys closed (open modules clicked).
        unfold: Folds unfolded.
    """

    expand: tuple[str, ...] = ()
    collapse: tuple[str, ...] = ()
    unfold: tuple[str, ...] = ()

    def after(self, action: str, key: str, inside: Iterable[str] = ()) -> ViewState:
        """The state one click later: ``action`` (one of :data:`ACTIONS`) on the item ``key``.

        ``inside``: for a close, the keys of what the item holds (the calls of its children too), so
        that closing what a click opened undoes the clicks made inside it.
        """
        expand, collapse, unfold = set(self.expand), set(self.collapse), set(self.unfold)
        if action == "expand":
            if key in collapse:
                collapse.discard(key)
            else:
                expand.add(key)
        elif action == "collapse":
            opened = expand & ({key} | set(inside))
            if opened:  # closing what was opened: it goes back, with what was opened inside it
                expand -= opened
            else:
                collapse.add(key)
        elif action == "unfold":
            unfold.add(key)
        else:
            raise UsageError(f"unknown view action {action!r}; choose one of {', '.join(ACTIONS)}")
        return ViewState(tuple(sorted(expand)), tuple(sorted(collapse)), tuple(sorted(unfold)))

    def options(self, graph: Graph, base: ViewOptions) -> ViewOptions:
        """The options drawing this state of ``graph``: the default's depth and folding, plus the clicks."""
        depth, fold = base.depth, base.fold
        if depth is None and plan_of(view_of(graph, base)) is not None:
            default = plan_of(view_of(graph, base))  # made once per graph and options, as every view is
            depth, fold = default.depth, fold and default.folding
        return ViewOptions(depth=depth, max_nodes=base.max_nodes, expand=base.expand, collapse=base.collapse,
                           unfold=base.unfold, fold=fold, clicked=self if self != ViewState() else None)


def actions_of(drawn: Graph) -> list[tuple[str, str]]:
    """The clicks a view offers: ``("expand", box)``, ``("unfold", fold)``, ``("collapse", open module)``."""
    plan = plan_of(drawn)
    if plan is None:
        return []
    out = [("unfold" if box.kind == "fold" else "expand", box.key) for box in plan.boxes.values()]
    out += [("collapse", key) for key, _, _ in plan.clusters]
    return out


def explore(graph: Graph, base: ViewOptions | None = None, budget: int = MAX_STATES
            ) -> tuple[list[ViewState], list[dict[str, dict[str, int]]]]:
    """The states a report of ``graph`` prepares, and where each click leads from each of them.

    Best first from the default: states that change fewer separate places
    come first (opening a block and then its attention is one place; two
    blocks are two), then those fewer clicks away; a close counts double
    (closing what the default opens is the rarer wish). A state that draws
    more than twice ``max_nodes`` items (or than 300, when ``max_nodes`` is
    bigger) is left out (too big to lay out and send again), and so are
    states past :data:`MAX_STATE_ITEMS` drawn items in all. Returns the states (the default first) and, per state, ``{action:
    {key: state index}}`` for the clicks that lead to a prepared state
    (closing what a click opened leads back to the state before it).
    """
    import heapq

    base = base or ViewOptions()
    limit = 2 * min(base.max_nodes, DEFAULT_MAX_NODES)  # the first view may be big if asked; a click's stays light
    scopes = _scopes_of(graph)
    states: list[ViewState] = []
    index: dict[ViewState, int] = {}
    clicks_of: list[list[tuple[str, str, ViewState]]] = []
    queue: list[tuple[tuple[int, int], int, ViewState]] = [((0, 0), 0, ViewState())]
    queued = {ViewState()}
    pushed = 1
    items = 0
    while queue and len(states) < budget:
        (_, clicks), _, state = heapq.heappop(queue)
        drawn = view_of(graph, state.options(graph, base))
        plan = plan_of(drawn)
        size = plan.visible if plan is not None else len(drawn.nodes)
        if states and (size > limit or items + size > MAX_STATE_ITEMS):
            continue
        items += size
        index[state] = len(states)
        states.append(state)
        moves = []
        for action, key in actions_of(drawn):
            target = state.after(action, key, scopes.under(key) if action == "collapse" else ())
            moves.append((action, key, target))
            if target not in queued:
                queued.add(target)
                heapq.heappush(queue, ((_places(target, scopes), clicks + 1), pushed, target))
                pushed += 1
        clicks_of.append(moves)
    transitions: list[dict[str, dict[str, int]]] = [{} for _ in states]
    for at, moves in enumerate(clicks_of):
        for action, key, target in moves:
            found = index.get(target)
            if found is not None and found != at:
                transitions[at].setdefault(action, {})[key] = found
    return states, transitions


def _places(state: ViewState, scopes: _Scopes) -> int:
    """How many separate places of the graph a state changes (a close counts twice)."""
    opened = set(state.expand)
    roots = [key for key in opened
             if key not in scopes.by_key or not any(s.key in opened for s in list(scopes.by_key[key].ancestors())[1:])]
    return len(roots) + len(state.unfold) + 2 * len(state.collapse)
