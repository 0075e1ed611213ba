"""Distributed training: which rank a recording is, its own run file per rank, and sharded gradients' local parts.

A process of a ``torchrun`` job (or of any ``torch.distributed`` program)
records its own gradients into its own run file, named after its rank
(``run.rank0.vizgrad``), with where it ran in the run's metadata. Nothing
here communicates: ranks agree on a job id from the launcher's environment,
so ranks on different hosts need no shared file system and training gets no
collective.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["rank_info", "rank_path", "job_id", "is_sharded", "dtensor_type", "local_parts", "RANK_PATTERN",
           "fsdp_shards"]

#: What a per-rank run file name holds before its suffix: ``run.rank0.vizgrad``.
RANK_PATTERN = re.compile(r"\.rank(\d+)(?=\.[^.]*$|$)")


def _dist() -> Any:
    """``torch.distributed`` when the running torch has it and a process group is up, else ``None``."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - a torch built without distributed support
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


def job_id() -> str:
    """An id every rank of one launch computes alike, from the launcher's rendezvous settings."""
    keys = ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "GROUP_WORLD_SIZE")
    text = "|".join(f"{key}={os.environ.get(key, '')}" for key in keys)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def rank_info() -> dict[str, Any] | None:
    """This process's place in a distributed job, or ``None`` outside one (or in a job of one process).

    Read from ``torch.distributed`` once its process group is up, else from
    what ``torchrun`` (or ``torch.multiprocessing`` code that sets the same
    variables) put in the environment: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``.
    """
    dist = _dist()
    backend = None
    if dist is not None:
        rank, world = dist.get_rank(), dist.get_world_size()
        backend = str(dist.get_backend())
    else:
        try:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        except (KeyError, ValueError):
            return None
    if world <= 1:
        return None
    return {"rank": rank, "world_size": world, "local_rank": int(os.environ.get("LOCAL_RANK", rank)),
            "backend": backend, "host": socket.gethostname(), "job": job_id()}


def backend_now() -> str | None:
    """The process group's backend, once it is up (a script initialises it after recording started)."""
    dist = _dist()
    return None if dist is None else str(dist.get_backend())


def rank_path(path: str | os.PathLike[str], rank: int) -> Path:
    """The run file of ``rank`` for ``path``: ``run.vizgrad`` -> ``run.rank0.vizgrad``; ``{rank}`` in it is filled in."""
    text = os.fspath(path)
    if "{rank}" in text:
        return Path(text.replace("{rank}", str(rank)))
    target = Path(text)
    if RANK_PATTERN.search(target.name):  # already a rank's name: it is this rank's only if it says so
        return target.with_name(RANK_PATTERN.sub(f".rank{rank}", target.name))
    if target.suffix:
        return target.with_name(f"{target.stem}.rank{rank}{target.suffix}")
    return target.with_name(f"{target.name}.rank{rank}")


def dtensor_type() -> type | None:
    """torch's ``DTensor`` class once something imported it (else no tensor can be one: nothing to check)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None) if module is not None else None


def local_parts(values: Sequence[Any]) -> Sequence[Any]:
    """``values`` with each DTensor replaced by this rank's local part: summaries never gather (no collective)."""
    dtensor = dtensor_type()
    # Told by the distinct types first: a step's thousands of plain tensors cost one set, not an isinstance each.
    if dtensor is None or not any(issubclass(kind, dtensor) for kind in set(map(type, values))):
        return values
    return [value.to_local() if isinstance(value, dtensor) else value for value in values]


def fsdp_shards(module: Any) -> dict[int, tuple[Any, str]]:
    """For a model sharded with FSDP2 (``fully_shard``): ``id(unsharded parameter)`` -> (sharded parameter, name).

    FSDP2 computes with unsharded copies of the parameters, which are the
    leaves of the autograd graph, and hands the reduce-scattered gradient to
    the sharded parameter the optimizer steps. This maps one to the other.
    It reads FSDP2's own records of its parameters (no public API has them);
    on any other layout of them it returns what it could read.
    """
    names = {id(param): name for name, param in module.named_parameters()}
    found: dict[int, tuple[Any, str]] = {}
    for sub in module.modules():
        get_state = getattr(sub, "_get_fsdp_state", None)
        if get_state is None:
            continue
        try:
            group = get_state()._fsdp_param_group
            params = group.fsdp_params if group is not None else ()
            for fsdp_param in params:
                sharded = fsdp_param.sharded_param
                unsharded = getattr(fsdp_param, "_unsharded_param", None)
                if unsharded is not None and id(sharded) in names:
                    found[id(unsharded)] = (sharded, names[id(sharded)])
        except AttributeError:  # another torch's FSDP2 internals: the leaves stay unnamed
            continue
    return found


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is a DTensor sharded over some mesh dimension (each rank holds a part of it)."""
    placements = getattr(tensor, "placements", None)
    return placements is not None and any(placement.is_shard() for placement in placements)
