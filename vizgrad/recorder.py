"""``vizgrad.record()``: every ``backward()`` inside the block becomes one recorded step."""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import math
import operator
import os
import sys
import threading
import warnings
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.autograd import function as _function

from vizgrad import checking, clipping, modules, naming, ranks
from vizgrad.capture import NodeCapture, patch_lock
from vizgrad.errors import RecordingWarning, UsageError, VizgradError
from vizgrad.gcpause import paused_gc
from vizgrad.gradtable import WIDTH, GradIndex, GradTable
from vizgrad.graph import Graph
from vizgrad.loop import encode_marks
from vizgrad.run import Run, Step
from vizgrad.stats import SEGMENT_LIMIT, Batch, Reduced, Reducer, SummaryMemo, summarize, summarize_distinct
from vizgrad.tracing import LiveMap, Tracer, as_roots

__all__ = ["record", "Recorder", "DEFAULT_HOLD"]

#: Default ``hold``: the newest step holds its gradients up to this many elements.
DEFAULT_HOLD = SEGMENT_LIMIT
#: Graph plans a recorder keeps (least recently used ones go): a graph whose
#: topology changes every step must not grow the heap.
_PLANS_KEPT = 32
_GRAPHS_KEPT = 64

_LIBRARY_DIRS = (os.path.dirname(os.path.abspath(__file__)) + os.sep, os.path.dirname(torch.__file__) + os.sep)
_shape_and_dtype = operator.attrgetter("shape", "dtype")
_REGISTER = "_register_hook"
_LEAF_SEQUENCE = (1 << 64) - 1  # the sequence number autograd gives every AccumulateGrad


# -- watching hook registrations ------------------------------------------------------------------------------
def _sequence_counter() -> int:
    """This thread's autograd sequence number now: the next backward node it makes gets it (or a larger one)."""
    if _peek_sequence is not None:
        return _peek_sequence()
    with torch.inference_mode(False), torch.enable_grad():  # a node of our own tells, one number later
        return (torch.empty((), requires_grad=True) * 1).grad_fn._sequence_nr() + 1


_peek_sequence: Callable[[], int] | None = getattr(torch._C._autograd, "_get_sequence_nr", None)


class _HookWatch:
    """When hooks that may change gradients were registered: per thread, that thread's sequence number then.

    Autograd numbers backward nodes per thread in creation order. A node
    created after the last hook registration of its thread (and after
    recording started watching that thread) cannot carry a tensor hook, a
    pre-hook or a post-hook added by anyone but vizgrad: no registration
    happened since it exists. Marks are the thread's next number at the time. Whatever the order of registration, a node not
    known to be clean so is hooked itself.
    """

    def __init__(self) -> None:
        self.event = 0  # registrations seen, all threads
        self.last_event: dict[int, int] = {}  # thread -> its latest registration's event number
        self.mark: dict[int, int] = {}  # thread -> sequence number at its latest registration
        self.quiet = threading.local()  # set while vizgrad registers hooks of its own

    def note(self) -> None:
        """Records a registration in the calling thread (vizgrad's own are not counted)."""
        if getattr(self.quiet, "on", False):
            return
        thread = threading.get_ident()
        self.mark[thread] = _sequence_counter()
        self.event += 1
        self.last_event[thread] = self.event


_watch = _HookWatch()


class _Patches:
    """torch's ``backward`` and hook registration, wrapped once while any recorder is active.

    Recorders may start and stop in any order (two threads' blocks may
    overlap any way): the originals come back when the last one stops.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.recorders: list[Recorder] = []
        self.originals: dict[str, Any] = {}

    def add(self, recorder: Recorder) -> None:
        with self.lock:
            if not self.recorders:
                self._install()
            self.recorders.append(recorder)

    def remove(self, recorder: Recorder) -> None:
        with self.lock:
            if recorder in self.recorders:
                self.recorders.remove(recorder)
                if not self.recorders:
                    self._restore()

    def original_backward(self) -> Callable[..., Any]:
        """torch's own ``torch.autograd.backward``."""
        backward = self.originals.get("backward", torch.autograd.backward)
        return getattr(backward, "__wrapped__", backward)

    def _install(self) -> None:
        original_backward = torch.autograd.backward
        original_register_hook = torch.Tensor.register_hook
        with patch_lock:
            original_node_register = getattr(_function._HookMixin, _REGISTER)
        self.originals = {"backward": original_backward, "register_hook": original_register_hook,
                          "node_register": original_node_register}
        patches = self

        def backward(tensors: Any, grad_tensors: Any = None, retain_graph: Any = None, create_graph: bool = False,
                     grad_variables: Any = None, inputs: Any = None) -> None:
            """``torch.autograd.backward``, recorded by vizgrad as one step."""
            def run_torch() -> None:
                original_backward(tensors, grad_tensors, retain_graph, create_graph, grad_variables, inputs=inputs)

            seeds = grad_tensors if grad_tensors is not None else grad_variables  # torch reads either
            run = run_torch
            for recorder in list(patches.recorders):  # each one wraps the ones that started before it
                run = _bind(recorder, run, tensors, seeds, create_graph)
            return run()

        def register_hook(tensor: torch.Tensor, hook: Callable[..., Any]) -> Any:
            """``Tensor.register_hook``, noted by vizgrad (such hooks can change gradients)."""
            try:
                return original_register_hook(tensor, hook)
            finally:  # after: a node the registration made (a view's) is older than the mark
                _watch.note()

        def node_register(backward_hooks: Any, hook: Any) -> Any:
            """torch's registration of node pre- and post-hooks, noted by vizgrad (they can change gradients)."""
            try:
                return original_node_register(backward_hooks, hook)
            finally:
                _watch.note()

        original_grad = torch.autograd.grad
        self.originals["grad"] = original_grad

        def grad(outputs: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            """``torch.autograd.grad``, recorded by vizgrad as a call of the next step (``record(grad_calls=True)``)."""
            result: list[Any] = []

            def run_torch() -> None:
                result.append(original_grad(outputs, inputs, *args, **kwargs))

            seeds = args[0] if args else kwargs.get("grad_outputs")
            batched = kwargs.get("is_grads_batched", args[5] if len(args) > 5 else False)
            run = run_torch
            if not batched:  # vmapped seeds: one call is many backward passes, not a step's graph
                for recorder in list(patches.recorders):
                    if recorder.grad_calls:
                        run = _bind_call(recorder, run, outputs, seeds, kwargs.get("create_graph", False))
            run()
            return result[0]

        grad.__wrapped__ = original_grad  # type: ignore[attr-defined]
        grad.__doc__ = original_grad.__doc__
        torch.autograd.grad = grad  # type: ignore[assignment]
        backward.__wrapped__ = original_backward  # type: ignore[attr-defined]
        register_hook.__wrapped__ = original_register_hook  # type: ignore[attr-defined]
        register_hook.__doc__ = original_register_hook.__doc__
        torch.autograd.backward = backward  # type: ignore[assignment]
        torch.Tensor.register_hook = register_hook  # type: ignore[method-assign]
        with patch_lock:  # not while a capture has swapped it for its own
            setattr(_function._HookMixin, _REGISTER, staticmethod(node_register))
        modules.install()

    def _restore(self) -> None:
        modules.uninstall()
        torch.autograd.backward = self.originals["backward"]  # type: ignore[assignment]
        torch.autograd.grad = self.originals["grad"]  # type: ignore[assignment]
        torch.Tensor.register_hook = self.originals["register_hook"]  # type: ignore[method-assign]
        with patch_lock:
            setattr(_function._HookMixin, _REGISTER, staticmethod(self.originals["node_register"]))
        self.originals = {}


def _bind(recorder: Recorder, run: Callable[[], None], tensors: Any, seeds: Any,
          create_graph: bool) -> Callable[[], None]:
    return lambda: recorder._backward(run, tensors, seeds, create_graph)


def _bind_call(recorder: Recorder, run: Callable[[], None], outputs: Any, seeds: Any,
               create_graph: bool) -> Callable[[], None]:
    return lambda: recorder._grad_call(run, outputs, seeds, create_graph)


_patches = _Patches()
#: The recorders now active, in the order they started (read by tests and tools).
_active = _patches.recorders


# -- arguments ----------------------------------------------------------------------------------------------------
def _check_size(name: str, value: Any, *, none: bool) -> None:
    """A size argument must be a whole number >= 0 (or ``None`` where that means "no limit")."""
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        allowed = "a whole number >= 0 or None" if none else "a whole number >= 0"
        raise TypeError(f"record({name}=...) must be {allowed}, got {value!r} ({type(value).__name__})")
    if value < 0:
        raise UsageError(f"record({name}={value}) must not be negative; use 0 for none"
                         + (" or None for no limit" if none else ""))


def _check_arguments(keep: Any, hold: Any, live_steps: Any, saved: Any, on_step: Any) -> None:
    _check_size("keep", keep, none=True)
    _check_size("hold", hold, none=True)
    _check_size("live_steps", live_steps, none=False)
    if not isinstance(saved, bool):
        raise TypeError(f"record(saved=...) must be True or False, got {saved!r}")
    try:
        callbacks = list(on_step) if not isinstance(on_step, (str, bytes)) and not callable(on_step) else None
    except TypeError:
        callbacks = None
    if callbacks is None or not all(callable(callback) for callback in callbacks):
        raise TypeError(f"record(on_step=...) must be a list of callables, each taking the new step; got {on_step!r}")


class _StepWork:
    """One step in flight: what was traced and hooked before ``backward()``, for the bookkeeping after."""

    __slots__ = ("graph", "live", "plan", "hooked", "roots", "seeds", "capture", "reducer", "starts", "noted")

    def __init__(self, graph: Graph, live: LiveMap, plan: _GraphPlan, hooked: Sequence[Any],
                 roots: Sequence[torch.Tensor], seeds: Any, capture: NodeCapture, reducer: Reducer | None,
                 noted: Sequence[Any] = ()) -> None:
        self.graph, self.live, self.plan, self.hooked = graph, live, plan, hooked
        self.roots, self.seeds, self.capture, self.reducer = roots, seeds, capture, reducer
        self.noted = noted  # the finite checks of the module outputs of this step's forward
        # The roots' nodes learn the backward's graph task (leaves' own hooks cannot share their node).
        self.starts = [root.grad_fn for root in roots if root.grad_fn is not None]


class Recorder:
    """Captures steps into a :class:`Run`; use it through :func:`record`.

    Args:
        params: Names of leaf tensors (mapping, ``named_parameters()`` or a
            module); inferred from the calling code when ``None``.
        keep: Keep full gradient values of tensors up to this many elements
            (``None``: keep all); summaries are always kept.
        hold: The newest step holds its gradients up to this many elements in
            full (``None``: all) until the next ``backward()`` starts; bigger ones
            are summarised as they flow, so autograd frees them as usual.
        saved: Also show tensors saved for backward in the graph.
        live_steps: How many recent steps keep their live tensors for
            ``step.grad_of(tensor)`` (older ones release them to save memory).
        store: The run file writer from :mod:`vizgrad.store` behind ``run.steps``
            (closed when recording stops), or ``None`` for a run in memory.
        run: The run to append to (a store-backed one when saving).
        on_step: Callables run after each completed step, with the step.
        grad_calls: Also record ``torch.autograd.grad`` calls, each attached
            to the ``backward()`` step that follows it (``step.grad_calls``).
        activations: Check every module output for NaN/Inf in the forward
            pass, so a non-finite loss is traced to the module that made it.
    """

    def __init__(self, params: Any = None, keep: int | None = 64, saved: bool = False, live_steps: int = 4,
                 store: Any = None, run: Run | None = None, on_step: Sequence[Callable[[Step], None]] = (),
                 hold: int | None = DEFAULT_HOLD, grad_calls: bool = False, activations: bool = False) -> None:
        _check_arguments(keep, hold, live_steps, saved, on_step)
        if not isinstance(activations, bool):
            raise TypeError(f"record(activations=...) must be True or False, got {activations!r}")
        self.activations = activations
        self.params = params
        self.keep = keep
        self.hold = hold
        self.tracer = Tracer(saved=saved)
        self.live_steps = live_steps
        self.store = store
        self.run = run if run is not None else Run()
        self.on_step = list(on_step)
        self.grad_calls = bool(grad_calls)
        self._calls: list[Step] = []  # torch.autograd.grad calls waiting for the backward() they belong to
        pairs = naming.explicit_pairs(params) if params is not None else []
        self._explicit_names = {id(t): name for name, t in reversed(pairs)} if params is not None else None
        #: Parameters sharded across ranks (DTensors): a merged run adds their shards up.
        self._sharded = sorted({name for name, tensor in pairs if ranks.is_sharded(tensor)})
        # A model sharded with FSDP2 computes with unsharded copies of its parameters: the graph's leaves.
        self._fsdp_model = params if isinstance(params, torch.nn.Module) and any(
            hasattr(sub, "_get_fsdp_state") for sub in params.modules()) else None
        self._shard_of: dict[int, torch.Tensor] = {}  # id(unsharded parameter) -> the sharded one
        self._inferred_names = naming.InferredLeafNames()
        self._keep_limit = math.inf if keep is None else keep
        # Gradients bigger than both limits are neither kept nor held: summarise them as they flow.
        self._reduce_limit = max(self._keep_limit, math.inf if hold is None else hold)
        self._graphs: collections.OrderedDict[str, list[Graph]] = collections.OrderedDict()
        self._plans: collections.OrderedDict[tuple[int, bool], _GraphPlan] = collections.OrderedDict()
        self._ones: dict[tuple[Any, ...], torch.Tensor] = {}
        self._live_steps: collections.deque[Step] = collections.deque()
        self._lock = threading.RLock()  # the caches and the run: steps of two threads may overlap
        self._local = threading.local()  # per thread: inside one of this recorder's steps
        self._baselines: dict[int, int] = {}  # thread -> its sequence number when first watched
        self._started_event = 0
        self.run.backward = self.backward  # type: ignore[attr-defined]

    def use_store(self, run: Run, store: Any) -> None:
        """Records into ``run``, backed by the run file writer ``store`` (closed when recording stops)."""
        self.run, self.store = run, store
        run.backward = self.backward  # type: ignore[attr-defined]

    # -- patching ----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Routes ``torch.autograd.backward`` (and so ``Tensor.backward``) through the recorder."""
        # Blocks may nest (a script that records itself, run by ``vizgrad render``):
        # each active recorder wraps the backward() of the ones before it, so all record every step.
        self._started_event = _watch.event
        self._baselines[threading.get_ident()] = _sequence_counter()
        names = self._explicit_names if self._explicit_names is not None else self._inferred_names
        self.run.loop.name_of = lambda tensor: names.get(id(tensor))
        self.run.loop.watch()
        clipping.watch(self._clipped)
        checking.watch_scalers(self._scaled)
        if self.activations:
            modules.check_activations(True)
        self.run._recording += 1
        if self._sharded:
            self.run.meta["sharded"] = self._sharded
        _patches.add(self)

    def stop(self) -> None:
        """Restores ``torch.autograd.backward`` (when no other recorder is active) and flushes the store."""
        try:
            loop = self.run.loop
            loop.unwatch()
            clipping.unwatch(self._clipped)
            checking.unwatch_scalers(self._scaled)
            if self.activations:
                modules.check_activations(False)
            self.run._recording = max(0, self.run._recording - 1)
            if loop.pending:  # optimizer steps after the last backward(): they close its iteration
                self.run.meta["optimizer_pending"] = encode_marks(loop.pending, loop.pending_rates)
            _patches.remove(self)
        finally:
            if self.store is not None:
                self.store.close()

    def _clipped(self, record: dict[str, Any]) -> None:
        """Notes a gradient clip on the latest step: each named parameter's gradient norm before and after."""
        with self._lock:
            if not self._live_steps:
                return
            step = self._live_steps[-1]
            name_of = self.run.loop.name_of
            # Several clips after one backward() (two models, or by value then by norm): each gradient's
            # first norm before and last norm after.
            clip = {**step.clip, "before": dict(step.clip["before"]), "after": dict(step.clip["after"])} \
                if step.clip else {"function": record["function"], "limit": record["limit"], "before": {}, "after": {}}
            for at, (param, before, after) in enumerate(zip(record["params"], record["before"], record["after"])):
                name = name_of(param) or f"(unnamed {at})"
                clip["before"].setdefault(name, before)
                clip["after"][name] = after
            clip["total_before"] = math.sqrt(sum(norm * norm for norm in clip["before"].values()))
            clip["total_after"] = math.sqrt(sum(norm * norm for norm in clip["after"].values()))
            step.clip = clip
            try:
                self.run._on_step_clip(step)
            except VizgradError as error:
                _warn(f"vizgrad could not keep the clipping of step {step.index} ({error})")

    def _scaled(self, record: dict[str, Any]) -> None:
        """Notes a ``GradScaler.step`` on the latest step: whether it skipped ``optimizer.step()``."""
        with self._lock:
            if not self._live_steps:
                return
            step = self._live_steps[-1]
            step.checks = {**(step.checks or {}), "amp": record}
            try:
                self.run._on_step_checks(step)
            except VizgradError as error:
                _warn(f"vizgrad could not keep the GradScaler step of step {step.index} ({error})")

    # -- one step -------------------------------------------------------------------------------------------
    def backward(self, tensors: Any, gradient: Any = None, retain_graph: bool | None = None,
                 create_graph: bool = False, inputs: Any = None) -> None:
        """Runs ``backward()`` on ``tensors`` as one recorded step (like ``torch.autograd.backward``)."""
        original = _patches.original_backward()
        self._backward(lambda: original(tensors, gradient, retain_graph, create_graph, inputs=inputs), tensors,
                       gradient, create_graph)

    def _grad_call(self, run_grad: Callable[[], None], outputs: Any, seeds: Any, create_graph: bool) -> None:
        """Runs one ``torch.autograd.grad`` call, recorded like a step and kept for the next ``backward()``."""
        if getattr(self._local, "in_step", False):  # inside a step (a custom Function's backward): part of it
            return run_grad()
        self._local.call = True
        try:
            return self._backward(run_grad, outputs, seeds, create_graph)
        finally:
            self._local.call = False

    def _backward(self, run_backward: Callable[[], None], tensors: Any, seeds: Any, create_graph: bool) -> None:
        if getattr(self._local, "in_step", False):  # backward() called inside one of this thread's steps
            return run_backward()
        # A step allocates thousands of short-lived objects (hooks, tuples) that reference
        # counting frees: no GC pass over the user's heap meanwhile.
        self._local.in_step = True
        try:
            with paused_gc():
                return self._record_step(run_backward, tensors, seeds, create_graph)
        finally:
            self._local.in_step = False

    def _record_step(self, run_backward: Callable[[], None], tensors: Any, seeds: Any, create_graph: bool) -> None:
        roots = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors) \
            if isinstance(tensors, (tuple, list)) else ()
        tracked = tuple(r for r in roots if isinstance(r, torch.Tensor) and r.requires_grad)
        if not tracked:  # let torch raise its own, well-known error (or run what it accepts)
            return run_backward()
        live_steps = self._live_steps
        if live_steps:  # the newest step's held gradients go before this backward() makes its own
            live_steps[-1].release_values()
        try:
            work = self._prepare(tracked, seeds if len(roots) == len(tracked) else None)
        except Exception as error:  # recording must never break the user's backward()
            _warn(f"vizgrad could not trace this backward() and did not record it ({_describe(error)})")
            return run_backward()
        capture = work.capture
        _watch.quiet.on = True
        try:
            capture.attach(work.hooked, work.plan.reduce, work.plan.leaf_hooks, work.starts)
        except Exception as error:
            capture.detach()
            _warn(f"vizgrad could not hook this backward() and did not record it ({_describe(error)})")
            return run_backward()
        finally:
            _watch.quiet.on = False
        try:
            run_backward()
        except BaseException:
            capture.detach()
            capture.captured.clear()
            raise
        capture.detach()
        try:
            self._finish(work)
        finally:
            capture.captured.clear()  # the step holds what it needs; drop the gradients
            if work.reducer is not None:
                work.reducer.clear()

    def _prepare(self, tracked: tuple[torch.Tensor, ...], seeds: Any) -> _StepWork:
        """Traces the graph and chooses the nodes to hook, before ``backward()`` runs."""
        as_roots(tracked)
        # The user's bindings are read only when a leaf has no name yet; variables, which
        # name other tensors from step to step (errD_real, errD_fake), are read every step.
        scope = _LazyScope()
        with self._lock:
            if self._fsdp_model is not None:
                self._name_fsdp_leaves()
            names: Any = self._explicit_names
            if names is None:
                names = self._inferred_names
                names.begin_step(scope)
            try:
                graph, live = self.tracer.trace(tracked, names,
                                                lambda: naming.variable_names(naming.scope_dicts(), tracked),
                                                modules=modules.call_log(), shapes_later=True,
                                                scope_name=scope.name_of)
            finally:
                self._inferred_names.end_step()
                scope.clear()
            graph = self._dedupe(graph)
            plan = self._plan(graph, self._neighbours_may_stand_in(graph, live))
        hooked = live.fns if plan.every_node_hooked else list(itertools.compress(live.fns, plan.hooked))
        reducer = None
        if self._reduce_limit < math.inf:  # parameters' zeros counted where reduced, on the steps that count them
            counted = plan.named_leaf_shapes if checking.zeros_due(len(self.run.steps)) else frozenset()
            reducer = Reducer(self._reduce_limit, zeros_of=counted)
        log = modules.call_log() if self.activations else None
        noted = log.take_activations() if log is not None else ()
        return _StepWork(graph, live, plan, hooked, tracked, seeds, NodeCapture(reducer), reducer, noted)

    def _name_fsdp_leaves(self) -> None:
        """Names FSDP2's unsharded parameters after the sharded ones, whose ``.grad`` the optimizer steps."""
        shards = ranks.fsdp_shards(self._fsdp_model)
        self._shard_of = {key: sharded for key, (sharded, _) in shards.items()}
        self._explicit_names.update({key: name for key, (_, name) in shards.items()})  # type: ignore[union-attr]
        sharded = sorted(set(self._sharded) | {name for param, name in shards.values() if ranks.is_sharded(param)})
        if sharded and self.run.meta.get("sharded") != sharded:
            self.run.meta["sharded"] = sharded  # merged runs add these parameters' shards up

    def _dedupe(self, graph: Graph) -> Graph:
        """Reuses an equal graph seen before, so a long run holds each topology once (recent ones remembered)."""
        same_hash = self._graphs.get(graph.structural_hash)
        if same_hash is None:
            same_hash = self._graphs[graph.structural_hash] = []
            while len(self._graphs) > _GRAPHS_KEPT:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(graph.structural_hash)
        for known in same_hash:
            if known is graph or known == graph:
                return known
        same_hash.append(graph)
        return graph

    def _finish(self, work: _StepWork) -> None:
        """Turns what the hooks saw into a step; on an internal error, records what it can and warns."""
        with self._lock:
            try:
                step = self._build_step(work)
            except Exception as error:  # never raise inside the user's backward()
                step = self._build_step_safely(work, error)
            is_call = getattr(self._local, "call", False)
            if not is_call:  # checked while its nodes are held; expectations are for backward() steps
                try:
                    step.checks = self._checks(step, work, self.run._take_expected())
                except Exception as error:  # a diagnosis missed, never the step
                    _warn(f"vizgrad could not check step {step.index} for findings ({_describe(error)})")
            # The step finds its tensors' nodes without keeping the graph alive (by identity once
            # several threads record: their sequence numbers may coincide).
            work.live.compact(identify=len(self._baselines) > 1)
            if is_call:  # an autograd.grad call: it waits for its backward()
                step.release()
                self._calls.append(step)
                return
            self._append(step)
        for callback in self.on_step:
            callback(step)

    def _build_step(self, work: _StepWork) -> Step:
        graph, live, plan, hooked = work.graph, work.live, work.plan, work.hooked
        captured = work.capture.captured
        pairs = list(map(captured.get, hooked))  # (grad_inputs, grad_outputs) per node, None where it did not run
        static = None not in pairs and list(map(len, itertools.chain.from_iterable(pairs))) == plan.lengths
        if static:  # every node ran with its usual arity: the value keys are the graph's, made once
            keys: list[tuple] = plan.all_keys
            values = list(itertools.chain.from_iterable(itertools.chain.from_iterable(pairs)))
            if plan.transpose_sources:
                values += self._transposes(map(values.__getitem__, plan.transpose_sources))
        else:
            keys, values = _keys_and_values(itertools.compress(live.positions, plan.hooked), pairs)
            if plan.transposed:
                position = {key: at for at, key in enumerate(keys)}
                keys += [key for key, _ in plan.transposed]
                values += self._transposes(None if position.get(source) is None else values[position[source]]
                                           for _, source in plan.transposed)
        self._add_extra_values(values, work, plan)
        batch, positions = summarize_distinct(values, self.keep, memo=plan.summary_memo)
        if live.structure is not None and not (static and plan.shapes_fit(batch, positions, values)):
            # The graph was found by structure; its ops' shapes differ from (or cannot be
            # checked against) the gradients that flowed: read them from the nodes.
            plan.fitted = None
            graph = self._dedupe(self.tracer.with_read_shapes(graph, live))
            plan = self._plan(graph, plan.unhooked)
        elif static:
            plan.fitted = (batch.plan, positions) if batch.plan is not None else None
        if static and plan.reduce is not None and batch.plan is not None and batch.plan != plan.reduce_learned:
            plan.learn_reduce(positions, batch.plan, self._reduce_limit)
        if static and positions == plan.positions:  # tensors shared as in the last step: same index
            index = plan.index
        else:
            index = GradIndex(plan.with_aliases({key: at for key, at in
                                                 zip(itertools.chain(keys, plan.extra_keys), positions) if at >= 0}))
            if static:
                plan.positions, plan.index = positions, index
        table = batch.to_table(index, self._held(batch, index, plan, work.reducer))
        return Step(len(self.run.steps), _loss(graph, table), graph, table=table, live=live,
                    limits=(self.keep, self.hold), loop=self.run.loop)

    def _checks(self, step: Step, work: _StepWork, expected: Sequence[checking.Expectation]) -> dict[str, Any] | None:
        """What the live step tells of its health (see :attr:`Step.checks`), while its nodes are held."""
        checks: dict[str, Any] = {}
        live, plan = work.live, work.plan
        origins = checking.nonfinite_checks(step, work.capture.captured, live.fns or (), live.positions)
        if origins:
            checks["origins"] = origins
        if work.noted and step.loss is not None and not math.isfinite(step.loss):
            forward = checking.forward_origin(work.noted, live)
            if forward is not None:
                forward["module"] = step.graph.node(forward["node"]).module
                checks["forward"] = forward
        if plan.named_leaves and checking.zeros_due(step.index):
            fns = live.fns or ()
            zeros = checking.zero_counts(plan.named_leaf_names, [fns[at].variable for at in plan.named_leaves],
                                         work.reducer.lookup if work.reducer is not None else None)
            if zeros:
                checks["zeros"] = zeros
        if expected:
            manual = checking.manual_checks(expected, step, live)
            if manual:
                checks["manual"] = manual
        return checks or None

    def _add_extra_values(self, values: list[Any], work: _StepWork, plan: _GraphPlan) -> None:
        """Appends the roots' values and seeds and the named leaves' values and ``.grad`` (as ``plan.extra_keys``)."""
        for root, seed in zip(work.roots, self._root_gradients(work.roots, work.seeds)):
            values += (root, seed, seed)
        fns, lookup = work.live.fns, (work.reducer.lookup if work.reducer is not None else None)
        shard_of = self._shard_of
        for at in plan.named_leaves:
            variable = fns[at].variable
            if shard_of:  # FSDP2: the sharded parameter's value and .grad (summaries take this rank's shard)
                variable = shard_of.get(id(variable), variable)
            grad = variable.grad
            values += (variable, grad if lookup is None else lookup(grad))

    def _held(self, batch: Batch, index: GradIndex, plan: _GraphPlan, reducer: Reducer | None) -> list[Any] | None:
        """The gradients the newest step holds in full: every summarised tensor but the stand-ins and parameters."""
        if self.live_steps == 0 or self.hold == 0:
            return None
        tensors = batch.tensors
        if reducer is not None and reducer.count:  # bigger than hold (and keep): summarised where it flowed
            held = [None if type(t) is Reduced else t for t in tensors]
        else:
            held = list(tensors)
        # Not gradients: the optimizer changes parameters in place, so only kept copies tell the truth.
        for key in plan.unheld_keys:
            at = index.get(key)
            if at is not None:
                held[at] = None
        return held

    def _build_step_safely(self, work: _StepWork, error: Exception) -> Step:
        """A step from whatever can be summarised one tensor at a time, after the fast path failed."""
        _warn(f"vizgrad hit an internal error summarising step {len(self.run.steps)} ({_describe(error)}); "
              "the step is recorded as far as possible")
        live, plan = work.live, work.plan
        pairs = list(map(work.capture.captured.get, work.hooked))
        keys, values = _keys_and_values(itertools.compress(live.positions, plan.hooked), pairs)
        start = len(values)
        try:
            self._add_extra_values(values, work, plan)
            keys += plan.extra_keys[:len(values) - start]
        except Exception:  # leaves or roots unreadable: the gradients alone
            del values[start:]
        rows, locators, index = [], [], {}
        for key, value in zip(keys, values):
            if value is None:
                continue
            try:
                one = summarize([value], self.keep)
                rows.append(one.rows[0])
                locators.append(one.value(0))
            except Exception:
                continue
            index[key] = len(rows) - 1
        index = plan.with_aliases(index)
        table = GradTable(GradIndex(index), np.array(rows, dtype=np.float64).reshape(-1, WIDTH), kept=locators)
        try:
            loss = _loss(work.graph, table)
        except Exception:
            loss = None
        return Step(len(self.run.steps), loss, work.graph, table=table, live=live, limits=(self.keep, self.hold),
                    loop=self.run.loop)

    def _append(self, step: Step) -> None:
        if self.run._pending_data:
            step.data.update(self.run._pending_data)
            self.run._pending_data.clear()
        step.grad_calls, self._calls = tuple(self._calls), []
        loop = self.run.loop
        step.stepped = loop.take_step()
        if not loop.described:  # a new optimizer (or new groups) stepped: the meta saved with the step says so
            self.run.meta.update(loop.description())
        place = self.run.meta.get("distributed")
        if place is not None and place.get("backend") is None:  # the script set its process group up since
            place["backend"] = ranks.backend_now()
        if self._live_steps:
            self._live_steps[-1].release_values()  # only the newest step holds full gradients
        self._live_steps.append(step)
        while len(self._live_steps) > self.live_steps:
            self._live_steps.popleft().release()
        try:
            self.run.steps.append(step)  # with a run file, this appends to disk in one transaction
        except VizgradError as error:  # a step that ends after its block (another thread's), a full disk...
            loop.untake_step(step.stepped)
            _warn(f"vizgrad could not keep step {step.index} ({error}); training goes on without it")

    def _transposes(self, grads: Iterable[Any]) -> list[Any]:
        """What unhooked transposes passed on: each gradient transposed (a view), ``None`` staying ``None``.

        A gradient too big to keep or hold needs no view: its summary is the
        same (same elements), so the transpose shares it.
        """
        limit = max(self._reduce_limit, SEGMENT_LIMIT)
        with torch.no_grad():  # views only: under create_graph they need no graph of their own
            return [grad if grad is None or type(grad) is Reduced or grad.numel() > limit else grad.t()
                    for grad in grads]

    def _plan(self, graph: Graph, unhooked: bool = True) -> _GraphPlan:
        """The graph's :class:`_GraphPlan` (with unhooked nodes or every node hooked), made once per graph."""
        key = (id(graph), unhooked)
        plan = self._plans.get(key)
        if plan is None or plan.graph is not graph:
            plan = self._plans[key] = _GraphPlan(graph, unhooked, self._reduce_limit)
            while len(self._plans) > _PLANS_KEPT:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return plan

    def _neighbours_may_stand_in(self, graph: Graph, live: LiveMap) -> bool:
        """Whether ops may go unhooked this step: no hook but vizgrad's can have changed what one received.

        Every op must be newer than the last hook registration of the
        backward's thread and than the start of watching that thread, and no
        newer than that thread's nodes can be (a node of another thread's
        graph may carry any number): see :class:`_HookWatch`. Leaves are
        always hooked, and nothing reads through them.
        """
        thread = threading.get_ident()
        baseline = self._baselines.get(thread)
        now = _sequence_counter()
        if baseline is None:  # a thread first seen now: its older nodes are unknown
            self._baselines[thread] = now
            return False
        if any(event > self._started_event for other, event in list(_watch.last_event.items()) if other != thread):
            return False  # another thread registered hooks: its sequence numbers are not comparable
        clean_from = baseline
        if _watch.last_event.get(thread, 0) > self._started_event:
            clean_from = max(baseline, _watch.mark[thread])
        numbers = [number for number in live.sequence_numbers() if number < _LEAF_SEQUENCE]
        return not numbers or clean_from <= min(numbers) and max(numbers) < now

    def _root_gradients(self, roots: Sequence[torch.Tensor], grad_tensors: Any) -> list[torch.Tensor | None]:
        """The gradient each root starts with: the one given, or ones for a scalar root."""
        if isinstance(grad_tensors, torch.Tensor):
            grad_tensors = (grad_tensors,)
        given = list(grad_tensors) if grad_tensors is not None else [None] * len(roots)
        given += [None] * (len(roots) - len(given))
        return [g if isinstance(g, torch.Tensor) else self._ones_like(r) if r.numel() == 1 else None
                for r, g in zip(roots, given)]

    def _ones_like(self, root: torch.Tensor) -> torch.Tensor:
        """A ones tensor like the scalar ``root``, made once per shape, dtype and device (it is only read)."""
        key = (root.shape, root.dtype, root.device)
        ones = self._ones.get(key)
        if ones is None:
            ones = self._ones[key] = torch.ones_like(root, memory_format=torch.contiguous_format).detach()
        return ones


def _keys_and_values(positions: Iterable[int], pairs: list[Any]) -> tuple[list[tuple], list[Any]]:
    """Value keys and gradients node by node, for a step where a node did not run or had another arity."""
    keys: list[tuple] = []
    values: list[Any] = []
    for pos, pair in zip(positions, pairs):
        if pair is None:
            continue
        grad_inputs, grad_outputs = pair
        node_id = f"n{pos}"
        keys += [("edge", node_id, slot) for slot in range(len(grad_inputs))]
        keys += [("node", node_id, k) for k in range(len(grad_outputs))]
        values += grad_inputs
        values += grad_outputs
    return keys, values


def _warn(message: str) -> None:
    """Issues a :class:`RecordingWarning` pointing at the user's line that called ``backward()``."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARY_DIRS):
        frame, level = frame.f_back, level + 1
    del frame
    warnings.warn(message, RecordingWarning, stacklevel=level)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0]


class _GraphPlan:
    """Where each gradient of a graph's steps goes, and what was checked: made once per graph, shared by its steps.

    A step's gradients arrive as ``(grad_inputs, grad_outputs)`` per hooked
    node, in traversal order; laid end to end they line up with :attr:`keys`.
    The roots' values and seeds and the named leaves' values and ``.grad``
    follow, under :attr:`extra_keys`.

    Not every node needs a hook. A node whose every incoming gradient arrives
    along a lone edge from a hooked node, and whose every outgoing gradient is
    the lone input of a hooked node, shows all its gradients in its
    neighbours' hooks: the same tensors. Such nodes are left unhooked (no two
    of them adjacent) and their keys are :attr:`aliases` of their neighbours'.

    All per-graph state of the recorder lives here (and goes when the plan is
    evicted): the key index of the last static step, the summary memo, the
    last summary plan the gradients fitted.

    Attributes:
        hooked: Per traversed node, whether it gets a hook (all of them when
            made with ``unhooked=False``); ``every_node_hooked`` when all do.
        reduce: Per hooked node, whether its hook summarises big gradients
            where they flow (one may exceed the reduce limit, or its size is unknown).
        leaves: Traversal positions of the leaves.
        keys: The value key of each gradient, hooked node by hooked node: its edges, then its outputs.
        lengths: ``len(grad_inputs), len(grad_outputs)`` of each hooked node, to check a step against.
        aliases: ``(key, key it equals)`` for the unhooked nodes' gradients.
        transposed: ``(key, key it is the transpose of)`` for unhooked transposes' outputs.
        extra_keys: Keys of the root and parameter values after them.
        named_leaves: Traversal positions of the named leaves (in :attr:`extra_keys` order).
        unheld_keys: The keys of root and parameter values and ``.grad``: not gradients, never held.
        positions: Batch position of each value in the last static step, with
            ``index``, the :class:`GradIndex` made from them (reused while steps agree).
        fitted: ``(summary plan, positions)`` of the last step whose gradients
            fitted the graph's shapes: a step with equal ones fits too.
    """

    def __init__(self, graph: Graph, unhooked: bool = True, reduce_limit: float = math.inf) -> None:
        self.graph = graph
        self.unhooked = unhooked
        self.keys: list[tuple] = []
        self.lengths: list[int] = []
        self.named_leaves: list[int] = []
        self.extra_keys: list[tuple] = []
        for root_id in graph.roots:
            self.extra_keys += [("value", root_id), ("node", root_id, 0), ("edge", root_id, 0)]
        traversed = [node for node in graph.nodes if node.kind in _TRAVERSED]
        unhooked_nodes, self.transposed = _unhooked_nodes(graph, traversed) if unhooked else ({}, [])
        self.hooked = [node.id not in unhooked_nodes for node in traversed]
        self.every_node_hooked = not unhooked_nodes
        self.leaves = [at for at, node in enumerate(traversed) if node.kind == "leaf"]
        self.aliases: list[tuple[tuple, tuple]] = []
        for at, node in enumerate(traversed):
            if node.id in unhooked_nodes:
                self.aliases += unhooked_nodes[node.id]
            else:
                self.keys += [("edge", node.id, slot) for slot in range(node.inputs)]
                self.keys += [("node", node.id, k) for k in range(node.outputs)]
                self.lengths += [node.inputs, node.outputs]
            if node.kind == "leaf" and node.name is not None:
                self.named_leaves.append(at)
                self.extra_keys += [("param", node.name), ("param_grad", node.name)]
        self.unheld_keys = [key for key in self.extra_keys if key[0] in ("value", "param", "param_grad")]
        self.named_leaf_names = [key[1] for key in self.extra_keys if key[0] == "param_grad"]
        #: The named leaves' shapes: a big gradient of one of them has its zeros counted where it is reduced.
        self.named_leaf_shapes = frozenset(tuple(traversed[at].shape) for at in self.named_leaves
                                           if traversed[at].shape is not None)
        hooked_nodes = [node for node, hooked in zip(traversed, self.hooked) if hooked]
        #: Per hooked node, whether it is a leaf (hooked before it accumulates; see NodeCapture).
        self.leaf_hooks = [node.kind == "leaf" for node in hooked_nodes]
        self.reduce = _reduce_flags(graph, hooked_nodes, reduce_limit) if reduce_limit < math.inf else None
        self.reduce_learned: Any = None  # the summary plan whose sizes ``reduce`` was learned from
        #: The static layout's keys: the hooked nodes' keys, then the transposes' outputs.
        self.all_keys = self.keys + [key for key, _ in self.transposed]
        position = {key: at for at, key in enumerate(self.keys)}
        self.transpose_sources = [position[source] for _, source in self.transposed]
        self.positions: list[int] | None = None
        self.index: GradIndex | None = None
        self._expected: tuple[list[int], list[tuple[Any, ...]]] | None = None
        self.summary_memo = SummaryMemo()
        self.fitted: tuple[Any, list[int]] | None = None

    def with_aliases(self, index: dict[tuple, int]) -> dict[tuple, int]:
        """``index`` plus the unhooked nodes' keys, at their neighbours' positions."""
        for key, source in self.aliases:
            at = index.get(source)
            if at is not None:
                index[key] = at
        return index

    def learn_reduce(self, positions: list[int], summary_plan: Any, limit: float) -> None:
        """Marks for reducing just the hooked nodes that saw a gradient over ``limit`` elements in this step.

        Sizes the graph does not know (later outputs of multi-output ops)
        are then known. Steps whose tensors are laid out otherwise learn
        again; a stale mark costs only memory (a big gradient held to the
        step's end), never a wrong number.
        """
        numels = np.asarray(summary_plan.numels + [0], dtype=np.int64)
        sizes = numels[np.asarray(positions[:len(self.keys)], dtype=np.int64)]  # -1 (no gradient): the 0 added
        spans = np.add.reduceat(np.asarray(self.lengths, dtype=np.int64).reshape(-1, 2), [0], axis=1).reshape(-1)
        starts = np.concatenate([[0], np.cumsum(spans)[:-1]]).astype(np.int64)
        biggest = np.zeros(len(spans), dtype=np.int64)
        has = spans > 0
        if has.any() and sizes.size:
            biggest[has] = np.maximum.reduceat(sizes, starts[has])
        self.reduce = (biggest > limit).tolist()
        self.reduce_learned = summary_plan

    def shapes_fit(self, batch: Batch, positions: list[int], values: Sequence[Any]) -> bool:
        """Whether the gradients fit the shapes and dtypes of the graph.

        When they are shared out as in an earlier step that fitted (equal
        ``positions``) and every distinct tensor has that step's shape, dtype,
        layout and device kind (an equal summary plan), they fit again without
        being looked at one by one.
        """
        if self.fitted is not None and batch.plan is not None and self.fitted[0] == batch.plan \
                and self.fitted[1] == positions:
            return True
        return self.shapes_match(values)

    def shapes_match(self, values: Sequence[Any]) -> bool:
        """Whether each op's incoming gradient has the shape and dtype the graph gives the op.

        The engine checks every gradient against the op's output metadata, so
        a match vouches for the graph's shapes without reading that metadata.
        """
        if self._expected is None:
            position = self.with_aliases({key: at for at, key in enumerate(self.all_keys)})
            checked = [node for node in self.graph.nodes if node.kind in ("op", "custom") and node.shape is not None]
            self._expected = ([position[("node", node.id, 0)] for node in checked],
                              [(node.shape, getattr(torch, node.dtype)) for node in checked])
        at, expected = self._expected
        try:
            return list(map(_shape_and_dtype, map(values.__getitem__, at))) == expected
        except (AttributeError, RuntimeError, TypeError):  # a None (no gradient) or a nested tensor: read the nodes
            return False


_TRAVERSED = ("op", "leaf", "custom")  # node kinds with a live backward node
_OPS = ("op", "custom")  # traversed kinds but leaves


_TRANSPOSE = "TBackward0"  # its gradient out is its gradient in, transposed (``grad.t()``)


def _reduce_flags(graph: Graph, hooked: Sequence[Any], limit: float) -> list[bool]:
    """Per hooked node: whether a gradient it sees or sends may exceed ``limit`` elements (or has no known size)."""
    by_id = graph.by_id
    sizes: dict[str, list[float]] = {node.id: [math.inf] * max(node.outputs, 1) for node in hooked}
    for node in graph.nodes:
        if node.id in sizes and node.shape is not None:
            sizes[node.id][0] = math.prod(node.shape)
    sends: dict[str, list[float]] = collections.defaultdict(list)
    for edge in graph.edges:
        if edge.kind == "grad" and edge.src in sizes:
            target = by_id[edge.dst]
            known = edge.output == 0 and target.shape is not None
            sends[edge.src].append(math.prod(target.shape) if known else math.inf)
    return [max(sizes[node.id] + sends.get(node.id, [])) > limit for node in hooked]


def _unhooked_nodes(graph: Graph, traversed: Sequence[Any]
                    ) -> tuple[dict[str, list[tuple[tuple, tuple]]], list[tuple[tuple, tuple]]]:
    """Nodes that need no hook of their own, and how to get their gradients without one.

    A node qualifies when each gradient into it comes along a lone edge from a
    traversed node, one of them into its first output, and each gradient out
    of it is the lone input of an op (not a leaf). A transpose also qualifies
    whatever its output feeds (a weight shared across a loop's steps): its
    gradient out is its gradient in, transposed. Leaves never do. No two chosen nodes are adjacent, so a hooked
    neighbour reports every gradient they share. They are picked by the
    minimum-degree greedy rule for independent sets.

    Returns:
        Node id -> ``(key, key it equals)`` for its gradients, and
        ``(key, key it is the transpose of)`` for the transposes' outputs.
    """
    edges = [edge for edge in graph.edges if edge.kind in ("grad", "root")]
    feeds = collections.Counter((edge.dst, edge.output) for edge in edges)
    into: dict[str, list[Any]] = collections.defaultdict(list)
    out_of: dict[str, list[Any]] = collections.defaultdict(list)
    for edge in edges:
        into[edge.dst].append(edge)
        out_of[edge.src].append(edge)
    kinds = {node.id: node.kind for node in graph.nodes}
    transposes = {node.id for node in traversed if node.op == _TRANSPOSE and node.inputs == 1}
    # Leaves are always hooked, and a gradient into a leaf is always read where it is sent: what a
    # leaf receives may differ (its own hooks), and held there it is copied into .grad, not moved.
    qualifying = [node.id for node in traversed
                  if node.kind != "leaf"
                  and any(edge.output == 0 for edge in into[node.id])  # its first output's gradient checks its shape
                  and all(kinds[edge.src] in _TRAVERSED and feeds[edge.dst, edge.output] == 1 for edge in into[node.id])
                  and (node.id in transposes
                       or all(kinds[edge.dst] in _OPS and feeds[edge.dst, edge.output] == 1
                              for edge in out_of[node.id]))]
    candidates = set(qualifying)
    neighbours = {node_id: ({edge.src for edge in into[node_id]} | {edge.dst for edge in out_of[node_id]}) & candidates
                  for node_id in qualifying}
    # Minimum-degree greedy: take a node with the fewest qualifying neighbours left, drop those
    # neighbours, update the degrees around them, repeat (traversal order breaks ties).
    rank = {node_id: k for k, node_id in enumerate(qualifying)}
    degree = {node_id: len(neighbours[node_id]) for node_id in qualifying}
    heap = [(degree[node_id], rank[node_id], node_id) for node_id in qualifying]
    heapq.heapify(heap)
    chosen: set[str] = set()
    gone: set[str] = set()
    while heap:
        left, _, node_id = heapq.heappop(heap)
        if node_id in gone or left != degree[node_id]:
            continue  # taken, dropped, or an outdated entry
        chosen.add(node_id)
        gone.add(node_id)
        for neighbour in neighbours[node_id] - gone:
            gone.add(neighbour)
            for other in neighbours[neighbour] - gone:
                degree[other] -= 1
                heapq.heappush(heap, (degree[other], rank[other], other))
    aliases = {node_id: [(("node", node_id, edge.output), ("edge", edge.src, edge.slot)) for edge in into[node_id]]
               + [(("edge", node_id, edge.slot), ("node", edge.dst, edge.output)) for edge in out_of[node_id]
                  if node_id not in transposes]
               for node_id in qualifying if node_id in chosen}
    transposed = [(("edge", node_id, 0), ("edge", into[node_id][0].src, into[node_id][0].slot))
                  for node_id in qualifying if node_id in chosen and node_id in transposes]
    return aliases, transposed


class _LazyScope:
    """The calling user code's variables, read from its frames on first use only."""

    def __init__(self) -> None:
        self._items: list[tuple[str, Any]] | None = None

    def items(self) -> list[tuple[str, Any]]:
        if self._items is None:
            self._items = naming.caller_scope()
        return self._items

    def __iter__(self) -> Any:
        return iter(self.items())

    def name_of(self, obj: Any) -> str | None:
        """The first variable of the calling code that holds ``obj``, or ``None``."""
        return naming.holder_name(self.items(), obj)

    def clear(self) -> None:
        """Drops the references to user objects."""
        self._items = None


def _loss(graph: Graph, table: GradTable) -> float | None:
    """The loss: the root's value when every root is a scalar (their sum for several), else ``None``."""
    total = 0.0
    for root_id in graph.roots:
        key = ("value", root_id)
        if table.numel(key) != 1:
            return None
        total += table.scalar(key)
    return total


@contextlib.contextmanager
def record(params: Any = None, *, keep: int | None = 64, hold: int | None = DEFAULT_HOLD, saved: bool = False,
           save: str | os.PathLike[str] | None = None, live_steps: int = 4,
           on_step: Sequence[Callable[[Step], None]] = (), grad_calls: bool = False,
           activations: bool = False) -> Iterator[Run]:
    """Records every ``backward()`` inside the block as one step of a :class:`Run`.

    Args:
        params: Names for leaf tensors: ``{"w": w}``, ``model.named_parameters()``
            or a module. When ``None``, names come from the calling code:
            parameters of ``nn.Module``\\ s in scope (``model.0.weight``) and
            variables holding leaf tensors (``w``, ``b``).
        keep: Keep full values of gradients up to this many elements in every
            step (``None``: all); saved in run files. Summaries are kept for
            every gradient.
        hold: The newest step also holds its gradients up to this many
            elements in full (``None``: all) until the next ``backward()`` starts,
            so ``step.grad_of(tensor)`` returns them. Bigger ones are
            summarised as they flow and freed, as autograd would free them.
        saved: Also draw the tensors each op saved for backward.
        save: Path of a run file to write step by step as the run goes. In a
            distributed job each rank writes its own: ``run.vizgrad`` becomes
            ``run.rank0.vizgrad``, ``run.rank1.vizgrad``... (``{rank}`` in the
            path says where the rank goes), with rank, world size, backend and
            host in ``run.meta["distributed"]``.
        live_steps: How many recent steps answer ``step.grad_of(tensor)``.
        on_step: Callables run with each step once it is complete (and saved).
        grad_calls: Also record each ``torch.autograd.grad`` call (a
            gradient penalty's) with its own graph and gradients, attached to
            the ``backward()`` step that follows it as ``step.grad_calls``;
            ``run.steps`` stays one per ``backward()``.
        activations: Check each module's output for NaN/Inf in the forward
            pass (a flag per output, read only when a loss is non-finite), so
            ``run.findings()`` names the module that first made a non-finite loss.

    Yields:
        The :class:`Run`; ``run.steps`` grows by one per ``backward()``.

    Raises:
        TypeError, UsageError: An argument has the wrong type or value (checked here, before any step).

    Hooks are removed at the end of every step, also on error.
    ``torch.autograd.backward`` (to see each step) and hook registration
    (``Tensor.register_hook`` and node hooks, which may change gradients) are
    wrapped inside the block and restored when the last active block exits.
    Recording reads gradients and never changes them; an internal error
    records the step as far as it can and issues a :class:`RecordingWarning`.
    """
    _check_arguments(keep, hold, live_steps, saved, on_step)
    if save is not None and not isinstance(save, (str, os.PathLike)):
        raise TypeError(f"record(save=...) must be a file path, got {save!r}")
    recorder = Recorder(params, keep=keep, hold=hold, saved=saved, live_steps=live_steps, on_step=on_step,
                        grad_calls=grad_calls, activations=activations)
    place = ranks.rank_info()  # in a distributed job, each rank records (and writes) a run of its own
    if save is not None:  # after the arguments are known good: a bad call leaves no file behind
        from vizgrad import store as run_store

        recorder.use_store(*run_store.open_for_recording(ranks.rank_path(save, place["rank"]) if place else save))
    if place:
        recorder.run.meta["distributed"] = place
    recorder.start()
    try:
        yield recorder.run
    finally:
        recorder.stop()
