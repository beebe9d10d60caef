"""Federated training: non-IID sites by scan group, and a Flower simulation that writes a run folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from lungct.data.manifest import ManifestRow
from lungct.errors import ConfigError
from lungct.federated.partition import partition_sites


def _rows(n_groups: int = 30, per_group: int = 4) -> list[ManifestRow]:
    rows = []
    for g in range(n_groups):
        label = g % 3
        for k in range(per_group):
            rows.append(
                ManifestRow(
                    f"c{label}/g{g}_{k}.png", label, ("normal", "benign", "malignant")[label],
                    f"sha{g}_{k}", f"pix{g}_{k}", 64, 64, "L", 100, 0.5, 0.1, f"g{g:03d}",
                )
            )  # fmt: skip
    return rows


def test_partition_keeps_groups_whole_fills_every_site_and_is_seeded() -> None:
    rows = _rows()
    sites = partition_sites(rows, 3, alpha=0.5, seed=1)
    by_group: dict[str, set[int]] = {}
    for r, s in zip(rows, sites, strict=True):
        by_group.setdefault(r.group_id, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values()), "a scan group was split across sites"
    assert set(sites) == {0, 1, 2}
    assert partition_sites(rows, 3, alpha=0.5, seed=1) == sites
    assert partition_sites(rows, 3, alpha=0.5, seed=2) != sites


def test_small_alpha_skews_the_case_mix() -> None:
    rows = _rows(n_groups=60)
    labels = np.array([r.label for r in rows])

    def skew(alpha: float) -> float:
        out = []
        for seed in range(10):
            sites = np.array(partition_sites(rows, 3, alpha=alpha, seed=seed))
            shares = [
                np.bincount(labels[sites == s], minlength=3) / max(1, np.sum(sites == s)) for s in range(3)
            ]
            out.append(np.mean([np.abs(sh - 1 / 3).sum() for sh in shares]))
        return float(np.mean(out))

    assert skew(0.1) > skew(100.0) + 0.3


def test_partition_refuses_impossible_requests() -> None:
    with pytest.raises(ConfigError):
        partition_sites(_rows(n_groups=2), 3)
    with pytest.raises(ConfigError):
        partition_sites(_rows(), 2, alpha=0)


def test_federated_simulation_writes_a_run_folder(phantom_root: Path, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("flwr", reason="federated extra not installed (pip install 'lungct[federated]')")
    from lungct.config import make_config
    from lungct.federated import coordinator
    from lungct.federated.coordinator import RoundPlan

    repairs: list[int] = []
    real_refresh = coordinator.refresh_batch_norm

    def counting_refresh(*args, **kwargs):
        repairs.append(1)
        return real_refresh(*args, **kwargs)

    monkeypatch.setattr(coordinator, "refresh_batch_norm", counting_refresh)
    from lungct.federated.simulate import simulate
    from lungct.model.predictor import Predictor

    cfg = make_config(
        {
            "data": str(phantom_root), "model": "small_cnn", "pretrained": "none", "image_size": 32,
            "n_boot": 10, "threads": 1, "lr": 0.003,
        }
    )  # fmt: skip
    out = tmp_path / "fed"
    plan = RoundPlan(sites=2, rounds=2, local_epochs=1, fedbn=True, dp_noise=0.3, dp_clip=5.0)
    m = simulate(cfg, out, plan, progress=False)
    run = json.loads((out / "run.json").read_text())
    fed = run["federated"]
    assert fed["sites_per_round"] == [[0, 1], [0, 1]], "both sites take part in every round"
    assert [r["round"] for r in fed["per_round_test"]] == [0, 1, 2]
    assert json.loads((out / "rounds.json").read_text()) == fed["per_round_test"]
    assert sum(s["groups"] for s in fed["site_summary"]) > 0
    assert m["decision"]["slice"]["n"] > 0 and (out / "eval/test/cases.csv").is_file()
    assert (out / "report.html").is_file()
    p = Predictor.from_run(out)  # the run folder works like one from `lungct train`
    assert p.rule.fitted_on.startswith("validation split")
    assert fed["batch_norm"].startswith("FedBN")
    dp = fed["differential_privacy"]
    assert dp["noise_multiplier"] == 0.3 and dp["clipping_norm"] == 5.0
    assert dp["epsilon"] > 0 and np.isfinite(dp["epsilon"]) and dp["delta"] == 1e-5
    # batch norm repaired once per evaluated state (rounds 0..2); the final weights reuse round 2's
    assert repairs == [1] * 3


def test_without_the_extra_the_command_says_how_to_install(monkeypatch, capsys, tmp_path: Path) -> None:
    from lungct.cli import main

    for name in [m for m in sys.modules if m == "flwr" or m.startswith("flwr.")] or ["flwr"]:
        monkeypatch.setitem(sys.modules, name, None)
    for name in [
        m for m in sys.modules if m.startswith("lungct.federated.") and m != "lungct.federated.partition"
    ]:
        monkeypatch.delitem(sys.modules, name)
    assert main(["federated", "simulate", "--out", str(tmp_path / "x")]) == 2
    assert "pip install 'lungct[federated]'" in capsys.readouterr().err


def test_fedbn_keeps_the_sites_batch_norm_layers_and_nothing_else() -> None:
    import torch

    from lungct.federated.task import batch_norm_keys, keep_local
    from lungct.model.network import build_network

    keys = batch_norm_keys("small_cnn")
    state = build_network("small_cnn", pretrained="none")[0].state_dict()
    assert keys and all(k in state for k in keys)
    assert any(k.endswith("running_mean") for k in keys) and any(k.endswith("weight") for k in keys)
    assert any(k.endswith("weight") and k not in keys for k in state), "conv/linear weights are shared"
    glob = {k: torch.zeros_like(v) for k, v in state.items()}
    mine = {k: torch.ones_like(v) for k, v in state.items()}
    merged = keep_local(glob, mine, keys)
    for k in state:
        expected = mine[k] if k in keys else glob[k]
        assert torch.equal(merged[k], expected), k
    assert keep_local(glob, None, keys) is glob, "first round: nothing local yet"


def test_batch_norm_refresh_repairs_statistics_broken_by_noise() -> None:
    import torch

    from lungct.config import make_config
    from lungct.federated.task import batch_norm_keys, evaluate_state, refresh_batch_norm
    from lungct.model.network import build_network

    cfg = make_config({"model": "small_cnn", "pretrained": "none", "image_size": 32})
    state = build_network("small_cnn", pretrained="none")[0].state_dict()
    broken = {k: (v - 5.0 if k.endswith("running_var") else v) for k, v in state.items()}
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32), dtype=np.uint8)
    assert not np.isfinite(evaluate_state(cfg, broken, images)).all(), "negative variances give NaN"
    fixed = refresh_batch_norm(cfg, broken, images)
    assert np.isfinite(evaluate_state(cfg, fixed, images)).all()
    assert all(torch.equal(fixed[k], broken[k]) for k in state if k not in batch_norm_keys("small_cnn"))
    assert all((fixed[k] >= 0).all() for k in state if k.endswith("running_var"))
