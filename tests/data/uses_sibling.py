"""Test script importing a module beside it, checking __name__, and exiting with a status."""
import sys

import torch

import helper_module

assert __name__ == "__main__", __name__
w = torch.ones(2, requires_grad=True)
(w * helper_module.SCALE).sum().backward()
print(f"scale {helper_module.SCALE}")
if len(sys.argv) > 1:
    sys.exit(int(sys.argv[1]))
