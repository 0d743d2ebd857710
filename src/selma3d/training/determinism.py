"""Bit-identical resume: random streams derived from the step, RNG snapshots, a test kill point.

A run killed at a checkpoint and resumed must equal the uninterrupted run bit for bit. Saving and
restoring every generator (torch, CUDA, numpy, Python, each DataLoader worker's) is fragile:
worker processes restart, prefetched batches are lost with the process. Instead the randomness
of a training step is a pure function of ``(seed, rank, step)``:

- :func:`seed_step` reseeds torch (CPU and CUDA), numpy and ``random`` at the start of every
  step, so augmented views, masks and dropout depend on the step index, not on history;
- the data samplers seed each sample from its global index
  (:func:`selma3d.data.sampling.sample_seed`), so the
  number of loader workers and where a run was resumed do not change what a step sees.

:func:`rng_state` / :func:`set_rng_state` still snapshot the global generators into the
checkpoint, for whatever draws happen outside a step.
"""

from __future__ import annotations

import os
import random
import signal

import numpy as np
import torch

#: stream tag of the per-step seeds (the samplers' per-sample streams use another one)
STEP_STREAM = 0x5E1

#: test-only: SIGKILL this process right after the checkpoint of this step is on disk
KILL_ENV = "SELMA3D_TEST_KILL_AFTER_STEP"


def derived_seed(*entropy: int) -> int:
    """A 63-bit seed mixed from integers by numpy's SeedSequence (well spread, platform-stable)."""
    state = np.random.SeedSequence([int(e) & 0xFFFFFFFFFFFFFFFF for e in entropy]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & 0x7FFFFFFFFFFFFFFF


def seed_torch(value: int) -> None:
    """What ``torch.manual_seed(value)`` does for the devices selma3d trains on (the CPU, every
    CUDA device, Apple's MPS), without its cost on a machine that lacks them: for each device
    type that is not initialized, ``torch.manual_seed`` records a deferred call together with a
    formatted stack trace (``traceback.format_stack``), ~0.2–0.6 ms per call, paid every step."""
    torch.default_generator.manual_seed(value)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(value)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        torch.mps.manual_seed(value)


def seed_step(seed: int, step: int, rank: int = 0) -> None:
    """Seed every global generator for training step ``step`` (0-based: steps done before it)."""
    value = derived_seed(seed, STEP_STREAM, rank, step)
    seed_torch(value)  # the CPU and every CUDA device
    np.random.seed(value % 2**32)
    random.seed(value)


def rng_state() -> dict:
    """Snapshot of the global generators (torch CPU and CUDA, numpy, Python), made of tensors,
    lists and numbers only, so Lightning's ``weights_only`` checkpoint loading accepts it."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)),
                       "position": int(position), "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict | None) -> None:
    """Restore a :func:`rng_state` snapshot (missing parts are left alone)."""
    if not state:
        return
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["position"],
                             n["has_gauss"], n["gauss"]))
    if "python" in state:
        p = state["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def kill_point(step: int) -> None:
    """Test hook: a real ``kill -9`` of this process once checkpoint ``step`` is written, when
    :data:`KILL_ENV` names that step (the kill-and-resume tests set it; users never do)."""
    wanted = os.environ.get(KILL_ENV)
    if wanted is not None and wanted.strip() == str(int(step)):
        os.kill(os.getpid(), signal.SIGKILL)
