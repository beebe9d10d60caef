"""The main job end to end: find data -> audit -> train -> evaluate -> explain -> report.

Real data is used when found (--data, $LUNGCT_DATA, ./data, then a download attempt). Only when
none is available does it fall back to synthetic phantoms, announced loudly in the console and
in the report.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from lungct.config import TrainConfig
from lungct.data.discovery import data_available, download, find_class_dirs, resolve_data_dir
from lungct.errors import DataError
from lungct.explain.gallery import run_explain
from lungct.pipeline.training import run_training
from lungct.report import write_report
from lungct.runs import find_run

log = logging.getLogger("lungct")

BANNER = "\n".join(
    [
        "#" * 78,
        "#  NO REAL DATA FOUND - RUNNING ON SYNTHETIC PHANTOMS.",
        "#  These are generated cartoons of CT slices, not patients. Every number this run",
        "#  reports is meaningless for clinical use. Get the IQ-OTH/NCCD data and pass --data.",
        "#" * 78,
    ]
)


def find_real_data(cfg: TrainConfig) -> Path | None:
    """The configured data folder, else a fresh download; None when neither works.

    An explicit ``--data`` that does not exist is an error (a typo should not silently become a
    synthetic run).
    """
    if cfg.data:
        find_class_dirs(resolve_data_dir(cfg.data))
    root = data_available(cfg.data)
    if root is not None:
        return root
    try:
        return download()
    except DataError as exc:
        log.warning("no local data and no download: %s", exc)
        return None


def run_main_job(cfg: TrainConfig, out: Path, *, allow_synthetic: bool = True, progress: bool = True) -> Path:
    """Run everything into the run folder ``out``; returns it."""
    root = find_real_data(cfg)
    synthetic = root is None
    if synthetic:
        if not allow_synthetic:
            raise DataError(
                "no real data found (--data, LUNGCT_DATA, ./data, download) and --no-synthetic given"
            )
        from lungct.data.phantoms import write_phantom_dataset

        print(BANNER, flush=True)
        root = out / "synthetic_phantoms"
        if not root.is_dir():
            write_phantom_dataset(
                root, n_patients=12, slices_per_patient=6, size=128, seed=cfg.seed, masks=True
            )
    cfg = replace(cfg, data=str(root))
    paths = run_training(cfg, out, progress=progress, synthetic=synthetic)
    explain_and_report(paths.root, max_images=16, progress=progress)
    if synthetic:
        print(BANNER, flush=True)
    return paths.root


def explain_and_report(run_dir: str | Path, out: Path | None = None, **kwargs) -> dict:
    """Grad-CAM gallery and checks for a run (see :func:`run_explain`); refreshes report.html when
    the run's own test split was explained (results then land in its metrics.json)."""
    result = run_explain(run_dir, out, **kwargs)
    if kwargs.get("images") is None:
        write_report(find_run(run_dir).root)
    return result
