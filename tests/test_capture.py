"""Tests for vizgrad.capture: node post-hooks that see every gradient and always go away."""

from __future__ import annotations

import collections

import pytest
import torch
from torch.autograd import function as autograd_function

from vizgrad import capture as capture_module
from vizgrad.capture import NodeCapture

from test_tracing import Cube

ORIGINAL_REGISTER = autograd_function._HookMixin._register_hook


def small_graph():
    """A graph with a shared input, a multi-output op, a custom Function and a leaf: ``(loss, nodes, x)``."""
    torch.manual_seed(0)
    x = torch.randn(4, 6, requires_grad=True)
    a, b = (x * 3).split(3, dim=1)
    loss = (a.sin() * Cube.apply(b) + a).sum()
    nodes, stack, seen = [], [loss.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        nodes.append(fn)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return loss, nodes, x


def reference_pairs(loss, nodes):
    """``(grad_inputs, grad_outputs)`` of every node, from torch's own ``register_hook``."""
    captured = {}
    handles = [fn.register_hook(lambda gi, go, fn=fn: captured.__setitem__(fn, (gi, go))) for fn in nodes]
    loss.backward(retain_graph=True)
    for handle in handles:
        handle.remove()
    return captured


def assert_same_pairs(got, want):
    assert set(got) == set(want)
    for fn, (grad_inputs, grad_outputs) in want.items():
        for mine, theirs in zip(got[fn][0] + got[fn][1], grad_inputs + grad_outputs):
            assert (mine is None) == (theirs is None), fn.name()
            if theirs is not None:
                assert torch.equal(mine, theirs), fn.name()


@pytest.fixture(params=["fast", "per node"])
def path(request, monkeypatch):
    if request.param == "per node":
        monkeypatch.setattr(capture_module, "_fast_path_works", False)
    else:
        assert capture_module._fast_path_available(), "this torch should support the fast path"
    return request.param


def test_every_node_is_captured_as_torch_reports_it(path):
    loss, nodes, _ = small_graph()
    want = reference_pairs(loss, nodes)
    capture = NodeCapture()
    capture.attach(nodes)
    # The fast path registered every node without torch's handles, custom Function and accumulator too.
    assert (capture._handles == []) == (path == "fast")
    try:
        loss.backward(retain_graph=True)
    finally:
        capture.detach()
    assert len(nodes) == 8  # sum, add, mul, sin, cube, split, mul, x's accumulator
    assert_same_pairs(capture.captured, want)


def test_detach_removes_every_hook(path):
    loss, nodes, _ = small_graph()
    capture = NodeCapture()
    capture.attach(nodes)
    capture.detach()
    loss.backward()
    assert capture.captured == {}
    assert autograd_function._HookMixin._register_hook is ORIGINAL_REGISTER


def test_user_hooks_on_the_same_nodes_keep_working(path):
    loss, nodes, _ = small_graph()
    seen = collections.Counter()
    handles = [fn.register_hook(lambda gi, go, fn=fn: seen.update([fn])) for fn in nodes]
    capture = NodeCapture()
    capture.attach(nodes)
    loss.backward(retain_graph=True)
    capture.detach()
    assert len(capture.captured) == len(nodes) and set(seen.values()) == {1}
    loss.backward(retain_graph=True)  # ours are gone, the user's stay
    assert set(seen.values()) == {2} and len(capture.captured) == len(nodes)
    for handle in handles:
        handle.remove()
    loss.backward()
    assert set(seen.values()) == {2}


def test_nested_captures_on_the_same_nodes_both_see_everything(path):
    loss, nodes, _ = small_graph()
    outer, inner = NodeCapture(), NodeCapture()
    outer.attach(nodes)
    inner.attach(nodes)
    loss.backward()
    inner.detach()
    outer.detach()
    assert set(outer.captured) == set(inner.captured) == set(nodes)


def test_other_hooks_registered_meanwhile_get_torch_handles(monkeypatch):
    """While the lean registration is swapped in, anyone else's hook still gets a real handle."""
    loss, nodes, _ = small_graph()
    others = []

    class Intruder:
        """A node whose registration also registers somebody else's hook, as another thread might."""

        def register_hook(self, hook):
            others.append(autograd_function._HookMixin._register_hook(None, print))
            return nodes[0].register_hook(hook)

    capture = NodeCapture()
    capture.attach([Intruder()])
    capture.detach()
    (hooks, handle), = others
    assert isinstance(hooks, collections.OrderedDict) and list(hooks.values()) == [print]
    handle.remove()
    assert not hooks
    assert autograd_function._HookMixin._register_hook is ORIGINAL_REGISTER


def test_registration_error_restores_torch(monkeypatch):
    class Broken:
        def register_hook(self, hook):
            raise RuntimeError("cannot register")

    loss, nodes, _ = small_graph()
    capture = NodeCapture()
    with pytest.raises(RuntimeError, match="cannot register"):
        capture.attach([nodes[0], Broken()])
    capture.detach()
    assert autograd_function._HookMixin._register_hook is ORIGINAL_REGISTER
    loss.backward()
    assert capture.captured == {}
