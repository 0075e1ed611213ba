"""Test script: the seed's autograd regression (y = 2x + 3), seeded, with its own arguments."""

import argparse
import sys

import torch as t

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--lr", type=float, default=0.001)
parser.add_argument("--fail-at", type=int, default=None, help="raise ValueError at this step")
args = parser.parse_args()

t.manual_seed(0)
x = t.randn(8, 1) * 20
y = x * 2 + 3
w = t.rand(1, 1, requires_grad=True)
b = t.zeros(1, 1, requires_grad=True)

for i in range(args.steps):
    if args.fail_at is not None and i == args.fail_at:
        raise ValueError(f"bad batch at step {i}")
    y_pred = x.mm(w) + b.expand_as(y)
    error = y_pred - y
    loss = (error ** 2 / 8).sum()
    loss.backward()
    with t.no_grad():
        w -= args.lr * w.grad
        b -= args.lr * b.grad
    w.grad.zero_()
    b.grad.zero_()
    print(f"step {i} loss {loss.item():.4f}")

print(f"argv {sys.argv[1:]}")
