"""Peak resident memory of a fresh process training a model bare, inside ``vizgrad.record()``, and under TorchLens.

    python benchmarks/peak_memory.py [--steps 5] [--repeats 1] [--models ResNet-18-style GPT-6x384] [--no-torchlens]

Every figure is one fresh process (``python benchmarks/peak_memory.py --child
MODEL --mode bare|record|torchlens``) that imports torch and vizgrad (so the
baseline includes the libraries), sets ``torch.set_num_threads(1)``, builds
the model and runs ``--steps`` SGD steps, then reports
``resource.getrusage(RUSAGE_SELF).ru_maxrss``. With ``--repeats N`` the
parent reports the median of N processes per mode. Target: recorded <= +8%
over bare.

Models:

- ResNet-18-style: the CNN of ``record_overhead.py`` (BasicBlocks with BatchNorm,
  layers [2, 2, 2, 2], 64-128-256-512 channels) on 8x3x64x64, cross-entropy.
- GPT-6x384: a nanoGPT-style decoder written here: 6 blocks, n_embd 384, 6 heads,
  causal self-attention written out (no fused attention), MLP 4x with GELU,
  LayerNorm before attention and MLP, learned position embeddings, lm_head tied
  to the token embedding; vocab 65, block 64, batch 16 (the bare process peaks
  at about 575 MiB here; batch 8 gave 467 MiB), cross-entropy over every position.

record: every step inside one ``vizgrad.record()`` block (defaults: summaries of
every gradient, full values up to 64 elements), kept in memory. torchlens:
``torchlens.trace`` (2.x's name for ``log_forward_pass``) with
``save_grads=True`` (TorchLens' "capture all gradients": full values of the
layers it hooks, 71 of the ResNet's 218 layers here) and
``backward_ready=True``; activations are saved only for the output (the loss,
which the step needs), then ``trace.log_backward(loss)``. One trace is alive at
a time: the previous step's trace is dropped before the next forward. The
torchlens process also imports torchlens. Skipped with a note when torchlens
is not importable.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

import vizgrad

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_overhead import TORCHLENS_CAPTURE, ClassifierLoss, resnet_parts  # noqa: E402

__all__ = ["GPT", "MODELS", "TARGET_INCREASE", "child", "main"]

TARGET_INCREASE = 0.08
MODES = ("bare", "record", "torchlens")
GPT_VOCAB, GPT_BLOCK, GPT_BATCH = 65, 64, 16  # bare peak 575 MiB here (batch 8: 467, block 128: 596)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a causal mask, written out as in nanoGPT's slow path."""

    def __init__(self, n_embd: int, n_head: int, block_size: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.register_buffer("mask", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, channels = x.size()
        q, k, v = self.c_attn(x).split(channels, dim=2)
        q = q.view(batch, time, self.n_head, channels // self.n_head).transpose(1, 2)
        k = k.view(batch, time, self.n_head, channels // self.n_head).transpose(1, 2)
        v = v.view(batch, time, self.n_head, channels // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.mask[:, :, :time, :time] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(batch, time, channels)
        return self.c_proj(y)


class MLP(nn.Module):
    """The transformer's feed-forward part: Linear to 4x width, GELU, Linear back."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, n_embd: int, n_head: int, block_size: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A nanoGPT-style decoder; ``forward(idx, targets)`` returns the cross-entropy over every position."""

    def __init__(self, vocab_size: int = 65, block_size: int = 64, n_layer: int = 6, n_head: int = 6,
                 n_embd: int = 384) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head, block_size) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as nanoGPT

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(positions)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def resnet_setup() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The ResNet-18-style CNN returning its loss, and a batch of 8x3x64x64 images with labels."""
    model, images, labels = resnet_parts()
    return ClassifierLoss(model), (images, labels)


def gpt_setup() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """GPT-6x384 (vocab 65) and a batch of token sequences with next-token targets."""
    torch.manual_seed(0)
    model = GPT(vocab_size=GPT_VOCAB, block_size=GPT_BLOCK)
    tokens = torch.randint(0, GPT_VOCAB, (GPT_BATCH, GPT_BLOCK + 1))
    return model, (tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())


MODELS: dict[str, Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]] = {
    "ResNet-18-style": resnet_setup,
    "GPT-6x384": gpt_setup,
}


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(model_name: str, mode: str, steps: int) -> dict[str, object]:
    """Trains ``model_name`` for ``steps`` SGD steps in ``mode``; returns the peak RSS and what ran."""
    torch.set_num_threads(1)
    model, inputs = MODELS[model_name]()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    result: dict[str, object] = {"model": model_name, "mode": mode, "steps": steps}
    if mode == "bare":
        for _ in range(steps):
            optimizer.zero_grad()
            model(*inputs).backward()
            optimizer.step()
    elif mode == "record":
        with vizgrad.record() as run:
            for _ in range(steps):
                optimizer.zero_grad()
                model(*inputs).backward()
                optimizer.step()
        result["nodes"] = len(run.steps[-1].graph)
    else:
        import warnings

        import torchlens

        warnings.filterwarnings("ignore", module="torchlens")
        options = torchlens.options.CaptureOptions(**TORCHLENS_CAPTURE)
        trace = None
        for _ in range(steps):
            optimizer.zero_grad()
            trace = None  # one trace alive at a time
            trace = torchlens.trace(model, list(inputs), capture=options)
            loss = trace[trace.output_layers[0]].out
            if loss is None:
                raise RuntimeError(f"TorchLens kept no output for {model_name}; cannot run backward.")
            trace.log_backward(loss)
            optimizer.step()
        result["layers"] = trace.num_layers
        result["saved_grad_layers"] = trace.num_saved_grad_layers
        result["torchlens"] = torchlens.__version__
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def run_child(model_name: str, mode: str, steps: int) -> dict[str, object]:
    """Runs one measurement in a fresh Python process and returns its JSON report."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", model_name, "--mode", mode,
               "--steps", str(steps)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{model_name} {mode} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_peak(model_name: str, mode: str, steps: int, repeats: int) -> tuple[float, dict[str, object]]:
    """Median peak RSS in MiB over ``repeats`` fresh processes, and the last process's report."""
    reports = [run_child(model_name, mode, steps) for _ in range(repeats)]
    return statistics.median(float(report["peak_rss_mib"]) for report in reports), reports[-1]


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    """Prints the table; returns one dict per model with the MiB of each mode measured."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per mode (median)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--no-torchlens", action="store_true", help="skip the TorchLens column")
    parser.add_argument("--child", choices=list(MODELS), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, default="bare", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.mode, args.steps)))
        return []

    with_torchlens = not args.no_torchlens and importlib.util.find_spec("torchlens") is not None
    print(f"torch {torch.__version__}, vizgrad {vizgrad.__version__}; {args.steps} SGD steps per process, "
          f"median of {args.repeats} process(es) per mode, peak RSS (ru_maxrss)")
    if not with_torchlens:
        reason = "--no-torchlens" if args.no_torchlens else "torchlens is not importable (pip install torchlens==2.36.1)"
        print(f"TorchLens column skipped: {reason}")
    print(f"{'model':<18}{'nodes':>7}{'bare MiB':>10}{'record MiB':>12}{'+%':>8}{'target':>8}  "
          f"{'TorchLens MiB':>14}{'+%':>8}")
    results = []
    for model_name in args.models:
        bare, _ = median_peak(model_name, "bare", args.steps, args.repeats)
        recorded, report = median_peak(model_name, "record", args.steps, args.repeats)
        increase = recorded / bare - 1
        verdict = "ok" if increase <= TARGET_INCREASE else "MISSED"
        result: dict[str, object] = {"model": model_name, "bare_mib": bare, "record_mib": recorded,
                                     "increase": increase, "nodes": report["nodes"]}
        peer = f"{'-':>14}{'':>8}"
        if with_torchlens:
            lens, _ = median_peak(model_name, "torchlens", args.steps, args.repeats)
            result["torchlens_mib"] = lens
            peer = f"{lens:>14.1f}{(lens / bare - 1) * 100:>+7.1f}%"
        results.append(result)
        print(f"{model_name:<18}{report['nodes']:>7}{bare:>10.1f}{recorded:>12.1f}{increase * 100:>+7.1f}%"
              f"{TARGET_INCREASE * 100:>+6.0f}% {verdict:<6}{peer}")
    return results


if __name__ == "__main__":
    main()
