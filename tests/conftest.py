"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture
def one_torch_thread():
    """One torch intra-op thread for the test (modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): tiny networks gain nothing from
    threads, OpenMP threads waiting on each other on a shared 2-core machine make every step several
    times slower, and a subprocess run with OMP_NUM_THREADS=1 then reduces in the same order."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A synthetic SELMA3D-like dataset (``tiny`` preset, seed 0), written once per session."""
    from selma3d.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("synth") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory):
    """A finetuned c-Fos run (3D UNet with features 4-8-16, 2 steps on 16³ crops), written once per
    session: everything `selma3d predict` needs, trained as little as possible."""
    import torch

    from selma3d.training.finetune import FinetuneConfig, finetune

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return finetune(FinetuneConfig(data=str(tiny_dataset), out=str(tmp_path_factory.mktemp("run") / "cfos"),
                                       model_options={"features": [4, 8, 16]}, max_steps=2,
                                       patch_size=(16, 16, 16), val_fraction=0.0, structures=["cfos"],
                                       progress=False, num_workers=0))
    finally:
        torch.set_num_threads(previous)
