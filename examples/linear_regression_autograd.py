"""Fit y = 2x + 3 with autograd: the seed tutorial's second program, ready for vizgrad.

Run it as a plain script (it converges to w≈2, b≈3):

    python examples/linear_regression_autograd.py

See every step's gradients without touching the code:

    vizgrad render examples/linear_regression_autograd.py -o regression.html

or record it from Python: ``python examples/linear_regression_autograd.py --report regression.html``.
"""

import argparse
import contextlib

import torch as t


def get_fake_data(batch_size=8):
    """Random data on the line y = 2x + 3."""
    x = t.randn(batch_size, 1) * 20
    y = x * 2 + 3
    return x, y


def train(steps=6000, lr=0.001, batch_size=8, seed=0, log_every=200, tolerance=1e-4):
    """The seed's autograd loop; returns the fitted (w, b) as floats."""
    t.manual_seed(seed)  # the seed draws unseeded data; seeding makes runs repeatable
    x, y = get_fake_data(batch_size)

    w = t.rand(1, 1, requires_grad=True)
    b = t.zeros(1, 1, requires_grad=True)

    for i in range(steps):
        # forward
        y_pred = x.mm(w) + b.expand_as(y)
        error = y_pred - y

        # loss (mean squared error) and stopping rule
        loss = error ** 2 / batch_size
        loss = loss.sum()
        if i % log_every == 0:
            print(f"step {i:5d}  loss {loss.item():.6f}")
        # The seed stopped at loss < 0.05 (or 0.01 by hand), when b is still ~2.8; go on until b ~ 3.
        if loss.item() < tolerance:
            break

        # backward: autograd computes dloss/dw and dloss/db
        loss.backward()

        # update the parameters (the seed's way: switch requires_grad off around the in-place update)
        w.requires_grad = False
        b.requires_grad = False
        w.sub_(lr * w.grad.data)
        b.sub_(lr * b.grad.data)
        w.requires_grad = True
        b.requires_grad = True

        # zero the gradients, or the next backward() adds to them
        w.grad.data.zero_()
        b.grad.data.zero_()

    print(f"done after {i} steps: loss {loss.item():.6f}  w {w.item():.4f}  b {b.item():.4f}")
    return w.item(), b.item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--report", metavar="HTML", help="record the run with vizgrad and write its report here")
    args = parser.parse_args(argv)
    if args.report:
        import vizgrad

        recording = vizgrad.record()
    else:
        recording = contextlib.nullcontext()
    with recording as run:
        train(steps=args.steps)
    if args.report:
        print(f"report: {run.report().save(args.report)}")


if __name__ == "__main__":
    main()
