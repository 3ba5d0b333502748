"""Shared helpers of the world's stages: paths, threads, atomic writes, checkpoints."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = ROOT / "samples" / "world"
sys.path.insert(0, str(HERE))


def scratch() -> Path:
    """Where checkpoints and rendered data go: $LIDB_WORLD_SCRATCH, else ~/.cache/lidb-world."""
    p = Path(os.environ.get("LIDB_WORLD_SCRATCH") or Path.home() / ".cache" / "lidb-world")
    p.mkdir(parents=True, exist_ok=True)
    return p


def setup_torch():
    """One thread unless LIDB_WORLD_THREADS says otherwise (the machine is shared)."""
    threads = int(os.environ.get("LIDB_WORLD_THREADS", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    return torch


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def save_checkpoint(path: Path, state: dict) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path):
    import torch

    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def resume(path: Path, model, opt, sched) -> tuple:
    """Loads a training checkpoint ({model, opt, sched, step, history}) into the three when it
    exists; returns (step, history) — (0, []) for a fresh start."""
    ck = load_checkpoint(path)
    if ck is None:
        return 0, []
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    sched.load_state_dict(ck["sched"])
    return ck["step"], ck["history"]


class Every:
    """True every `seconds` of wall time (checkpoint cadence)."""

    def __init__(self, seconds: float):
        self.seconds, self.last = seconds, time.time()

    def __call__(self) -> bool:
        if time.time() - self.last >= self.seconds:
            self.last = time.time()
            return True
        return False


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)
