"""Fit y = 2x + 3 with hand-written gradients: the seed tutorial's first program, corrected and checked.

The seed's version never updated ``w`` and ``b`` and had its gradient formulas
off by constant factors; this one fixes both. Every ``--check-every`` steps it
also lets autograd compute the same gradients inside ``vizgrad.record`` and
registers the hand-written ones with ``run.expect_grad``, so vizgrad compares
the two (``run.findings()`` is empty when they agree):

    python examples/linear_regression_manual.py
    python examples/linear_regression_manual.py --report manual.html   # manual vs autograd, per step
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


def train(steps=6000, lr=0.001, batch_size=8, seed=0, check_every=100, tolerance=1e-4, gradients=hand_gradients):
    """Gradient descent with hand-written gradients, checked against autograd; returns ``(w, b, run)``."""
    t.manual_seed(seed)
    x, y = get_fake_data(batch_size)

    # requires_grad only so that autograd can check the hand-written gradients; the updates use those.
    w = t.rand(1, 1, requires_grad=True)
    b = t.zeros(1, 1, requires_grad=True)

    with vizgrad.record(params={"w": w, "b": b}) as run:
        for i in range(steps):
            # forward
            y_pred = x.mm(w) + b.expand_as(y)
            error = y_pred - y
            loss = (error ** 2 / batch_size).sum()
            # The seed stopped at loss < 0.05 (or 0.01 by hand), when b is still ~2.8; go on until b ~ 3.
            if loss.item() < tolerance:
                break

            # backward, by hand
            dw, db = gradients(x, error.detach(), batch_size)
            if i % check_every == 0:  # autograd's gradients, recorded and compared with the hand-written ones
                run.expect_grad("w", dw)
                run.expect_grad("b", db)
                loss.backward()
                w.grad = b.grad = None

            # update: the step the seed forgot
            with t.no_grad():
                w -= lr * dw
                b -= lr * db

    print(f"done after {i} steps: loss {loss.item():.6f}  w {w.item():.4f}  b {b.item():.4f}")
    return w.item(), b.item(), run


def main(argv=None, gradients=hand_gradients, steps=6000):
    """Trains, then prints what vizgrad found when it compared the hand-written gradients with autograd's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--check-every", type=int, default=100)
    parser.add_argument("--report", help="also write an HTML report of the checked steps here")
    args = parser.parse_args(argv)
    _, _, run = train(steps=args.steps, check_every=args.check_every, gradients=gradients)
    found = run.findings()
    print(f"{len(run.steps)} steps checked against autograd: "
          + ("the hand-written gradients agree" if not found else f"{len(found)} findings"))
    for finding in found:
        print(" ", finding)
    if args.report:
        run.report().save(args.report)
        print(f"wrote {args.report}")
    return found


if __name__ == "__main__":
    main()
