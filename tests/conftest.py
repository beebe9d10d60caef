"""Shared fixtures: the real development subset (skipped when absent), phantom data, a tiny run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "iq-othnccd"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The IQ-OTH/NCCD development subset, or skip when it is not beside the checkout."""
    root = Path(os.environ.get("LUNGCT_SHARED_DATA", SHARED))
    if not root.is_dir():
        pytest.skip(
            f"real IQ-OTH/NCCD subset not found at {root} (set LUNGCT_SHARED_DATA to run these tests)"
        )
    return root


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A small synthetic dataset in the Kaggle layout: 7 patients x 3 slices per class, 64 px."""
    from lungct.data.phantoms import write_phantom_dataset

    return write_phantom_dataset(
        tmp_path_factory.mktemp("phantoms") / "data",
        n_patients=7,
        slices_per_patient=3,
        size=64,
        seed=0,
        masks=True,
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, phantom_root) -> Path:
    """A finished run folder: small_cnn, 32 px, 3 epochs on phantoms (a few seconds on 2 cores)."""
    from lungct.config import make_config
    from lungct.pipeline.training import run_training

    cfg = make_config(
        {
            "data": str(phantom_root),
            "model": "small_cnn",
            "pretrained": "none",
            "image_size": 32,
            "epochs": 3,
            "batch_size": 8,
            "lr": 3e-3,
            "n_boot": 50,
            "threads": 2,
            "warmup_epochs": 0.5,
        }
    )
    out = tmp_path_factory.mktemp("runs") / "tiny"
    run_training(cfg, out, progress=False)
    return out
