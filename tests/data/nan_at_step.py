"""A model whose output is NaN from --at on (a square root of a negative number in its forward pass)."""

import argparse

import torch
from torch import nn


class Root(nn.Module):
    def forward(self, x):
        return torch.sqrt(x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--at", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), Root(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.fill_(5.0)
    for step in range(args.steps):
        x = torch.full((3, 2), -10.0 if step >= args.at else 0.0)
        model(x).sum().backward()  # no optimizer: each step starts from the same parameters


if __name__ == "__main__":
    main()
