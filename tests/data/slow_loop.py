"""Test script for signals: records steps slowly and says when each one is done.

Prints ``done <i>`` after the backward() of step i (flushed), then sleeps, so a
test can signal the process between or during steps.
"""

import sys
import time

import torch

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05

torch.manual_seed(0)
w = torch.randn(3, requires_grad=True)
for i in range(steps):
    loss = ((w * torch.arange(3.0)) ** 2).sum()
    loss.backward()
    with torch.no_grad():
        w -= 0.01 * w.grad
    w.grad = None
    print(f"done {i}", flush=True)
    time.sleep(pause)
