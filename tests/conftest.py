"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A synthetic SELMA3D-like dataset (``tiny`` preset, seed 0), written once per session."""
    from selma3d.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("synth") / "tiny", preset="tiny", seed=0)
