"""Test script with a syntax error on line 4."""
import torch

for i in range(3)
    print(i)
