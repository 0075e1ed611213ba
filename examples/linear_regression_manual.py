"""Fit y = 2x + 3 with hand-written gradients: the seed tutorial's first program, corrected.

The seed's version never updated ``w`` and ``b`` and had its gradient formulas
off by constant factors; this one fixes both and asks vizgrad (autograd, seen
through ``vizgrad.record``) to check the hand-written gradients:

    python examples/linear_regression_manual.py
"""

import argparse

import torch as t

import vizgrad


def get_fake_data(batch_size=8):
    """Random data on the line y = 2x + 3."""
    x = t.randn(batch_size, 1) * 20
    y = x * 2 + 3
    return x, y


def hand_gradients(x, error, batch_size):
    """d/dw and d/db of loss = sum(error**2) / batch_size, written by hand."""
    # The seed wrote  dw = x.t().mm(error) / batch_size  and  db = error.sum():
    # both miss the 2 from d(e**2)/de = 2e, and db also misses the 1/batch_size.
    dw = 2 * x.t().mm(error) / batch_size
    db = 2 * error.sum() / batch_size
    return dw, db


def autograd_gradients(x, y, w, b, batch_size):
    """The same gradients from autograd, captured by vizgrad (the oracle for the hand-written ones)."""
    w = w.clone().requires_grad_(True)
    b = b.clone().requires_grad_(True)
    with vizgrad.record(params={"w": w, "b": b}) as run:
        loss = ((x.mm(w) + b.expand_as(y) - y) ** 2 / batch_size).sum()
        loss.backward()
    step = run.steps[0]
    return step.grad_of(w), step.grad_of(b)


def train(steps=6000, lr=0.001, batch_size=8, seed=0, check_every=1000, tolerance=1e-4):
    """Gradient descent with hand-written gradients; returns the fitted (w, b) as floats."""
    t.manual_seed(seed)
    x, y = get_fake_data(batch_size)

    w = t.rand(1, 1)
    b = t.zeros(1, 1)

    for i in range(steps):
        # forward
        y_pred = x.mm(w) + b.expand_as(y)
        error = y_pred - y
        loss = (error ** 2 / batch_size).sum()
        # The seed stopped at loss < 0.05 (or 0.01 by hand), when b is still ~2.8; go on until b ~ 3.
        if loss.item() < tolerance:
            break

        # backward, by hand
        dw, db = hand_gradients(x, error, batch_size)
        if i % check_every == 0:
            auto_dw, auto_db = autograd_gradients(x, y, w, b, batch_size)
            print(f"step {i:5d}  loss {loss.item():10.4f}  dw {dw.item():+.5e} (autograd {auto_dw.item():+.5e})"
                  f"  db {db.item():+.5e} (autograd {auto_db.item():+.5e})")
            assert t.allclose(dw, auto_dw, rtol=1e-4) and t.allclose(db.reshape(1, 1), auto_db, rtol=1e-4)

        # update: the step the seed forgot
        w -= lr * dw
        b -= lr * db

    print(f"done after {i} steps: loss {loss.item():.6f}  w {w.item():.4f}  b {b.item():.4f}")
    return w.item(), b.item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000)
    args = parser.parse_args(argv)
    train(steps=args.steps)


if __name__ == "__main__":
    main()
