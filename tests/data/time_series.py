"""The time-series LSTM of PyTorch's examples (two LSTMCells unrolled over the sequence), trained a few steps."""

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the model lives in the tests' models module
from models import Sequence  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--length", type=int, default=999, help="time steps unrolled (the example: 999)")
args = parser.parse_args()
torch.manual_seed(0)
wave = torch.sin(torch.arange(args.length + 1, dtype=torch.double) / 20).repeat(3, 1)
model = Sequence().double()
optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
for step in range(args.steps):
    optimizer.zero_grad()
    loss = nn.functional.mse_loss(model(wave[:, :-1]), wave[:, 1:])
    loss.backward()
    optimizer.step()
    print(f"step {step}: loss {loss.item():.5f}")
