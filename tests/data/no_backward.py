"""Test script that computes a loss but never calls backward()."""
import torch

w = torch.ones(2, requires_grad=True)
loss = (w * 3).sum()
print(f"loss {loss.item()}")
