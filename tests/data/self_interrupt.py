"""Test script that presses Ctrl-C on itself at step 3: inside backward(), outside it, or twice inside.

Usage: self_interrupt.py inside|outside|twice
"""

import os
import signal
import sys

import torch

mode = sys.argv[1]
w = torch.ones(3, requires_grad=True)


def ctrl_c(grad):
    """A gradient hook: runs in the middle of backward()."""
    os.kill(os.getpid(), signal.SIGINT)
    if mode == "twice":
        os.kill(os.getpid(), signal.SIGINT)
    return grad


for i in range(10):
    h = w * (i + 1)
    if i == 3:
        if mode == "outside":
            os.kill(os.getpid(), signal.SIGINT)
        else:
            h.register_hook(ctrl_c)
    h.sum().backward()
    print(f"done {i}", flush=True)
