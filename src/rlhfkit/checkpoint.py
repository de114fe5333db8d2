"""Checkpoint helpers shared by the trainers: atomic folders and RNG state.

A checkpoint is written to ``<name>.tmp`` and renamed over ``<name>`` only when complete, so an
interrupted save (kill -9, full disk) leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder; on success it replaces ``path`` (the old one is removed only then)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    yield tmp
    old = path.with_name(path.name + ".old")
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)


class ForcedStop(KeyboardInterrupt):
    """A second Ctrl-C while a step was finishing: stop at once, writing no checkpoint (the last one stays)."""


@contextmanager
def step_completes() -> Iterator[None]:
    """Run the block to its end even when Ctrl-C comes, then raise ``KeyboardInterrupt``.

    Wrap an optimiser step with everything that belongs to it (the step count, its evaluation, its log
    line, its checkpoint): a checkpoint written on Ctrl-C then names the step its weights are at, and
    ``--resume`` repeats nothing. A second Ctrl-C raises ``ForcedStop`` at once. Only Python's own Ctrl-C
    handler is replaced: a process that ignores SIGINT (started in the background by a shell, say) or handles
    it itself keeps doing so, and signals reach the main thread only, so elsewhere the block runs unguarded.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    pending: list[int] = []

    def hold(signum, frame):
        if pending:
            raise ForcedStop
        pending.append(signum)
        print("\nstopping after this step (Ctrl-C again to stop now, keeping the last checkpoint)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def find_checkpoint(path: str | Path) -> Path | None:
    """The usable checkpoint at ``path`` (falls back to ``.old`` if a save died mid-rename)."""
    path = Path(path)
    for p in (path, path.with_name(path.name + ".old")):
        if (p / "trainer_state.json").exists():
            return p
    return None


def save_state(folder: Path, state: dict, tensors: dict) -> None:
    """``trainer_state.json`` (plain values) + ``trainer_state.pt`` (optimiser, scheduler, RNG ...)."""
    torch.save(tensors, folder / "trainer_state.pt")
    (folder / "trainer_state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")


def load_state(folder: Path) -> tuple[dict, dict]:
    state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    tensors = torch.load(folder / "trainer_state.pt", weights_only=False)
    return state, tensors
