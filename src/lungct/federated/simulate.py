"""`lungct federated simulate`: sites from scan groups, Flower's simulation engine, a normal run folder.

The grouped split of `lungct train` (same seed) gives train / val / test. The training groups are
dealt to non-IID sites (:mod:`lungct.federated.partition`); each round every sampled site trains
locally (:mod:`lungct.federated.apps`), the strategy averages the weights, and the coordinator
evaluates the global model on the test split (per-round metrics in rounds.json). The final model's
temperature and decision rule are fitted on the validation groups, which the coordinator holds (a
simulation simplification: in a deployment they would come from a site's held-out data). The run
folder then has what `lungct train` writes, so `evaluate`, `predict`, `explain`, `serve` and the report
work on it unchanged.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx
from flwr.simulation import run_simulation

from lungct import CLASSES
from lungct.config import TrainConfig, save_config
from lungct.data.audit import run_audit
from lungct.data.discovery import resolve_data_dir
from lungct.data.splits import leakage_report, write_split
from lungct.evaluation.metrics import classification_metrics, softmax
from lungct.evaluation.operating import fit_operating_point
from lungct.federated.apps import client_app
from lungct.federated.partition import partition_sites, site_summary
from lungct.federated.task import evaluate_state, write_spec
from lungct.model.network import build_network
from lungct.model.predictor import Predictor
from lungct.model.train import load_images, set_determinism, set_threads
from lungct.pipeline.training import (
    evaluate_test_split,
    make_split,
    preprocess_config,
    run_record,
    write_run_report,
)
from lungct.runs import RunPaths, environment, save_checkpoint, write_json

log = logging.getLogger("lungct")

STRATEGIES = ("fedavg", "fedprox")


def simulate(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    sites: int = 3,
    rounds: int = 3,
    alpha: float = 0.5,
    local_epochs: int = 2,
    fraction: float = 1.0,
    strategy: str = "fedavg",
    proximal_mu: float = 0.01,
    progress: bool = True,
) -> dict[str, Any]:
    """Run a federated simulation into the run folder ``out_dir``; returns the test metrics."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}")
    t0 = time.time()
    paths = RunPaths(Path(out_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    set_determinism(cfg.seed)
    set_threads(cfg.threads)
    save_config(cfg, paths.config)
    write_json(paths.root / "environment.json", environment())
    root = resolve_data_dir(cfg.data)
    rows = run_audit(root, class_map=cfg.class_map, out_dir=paths.audit, progress=progress).rows
    assignment = make_split(cfg, rows)
    write_split(paths.split, rows, assignment)
    idx = {s: np.flatnonzero(np.array(assignment) == s) for s in ("train", "val", "test")}
    site_of = partition_sites([rows[i] for i in idx["train"]], sites, alpha, cfg.seed)
    members = {
        s: [rows[i].path for i, k in zip(idx["train"], site_of, strict=True) if k == s] for s in range(sites)
    }
    spec = write_spec(paths.root, cfg, root, members)
    net, spec_m, pinfo = build_network(cfg.model, cfg.pretrained)
    pre = preprocess_config(cfg, spec_m.input_size)
    y = np.array([r.label for r in rows])
    held = np.concatenate([idx["val"], idx["test"]])
    images = np.zeros((len(rows), pre.size, pre.size), np.uint8)
    images[held] = load_images([root / rows[i].path for i in held], pre, progress=progress)
    per_round: list[dict[str, Any]] = []
    sites_seen: list[list[int]] = []

    def train_metrics(replies: list, weight_key: str) -> MetricRecord:
        """Aggregate the sites' train metrics and record which sites took part in the round."""
        ms = [r["metrics"] for r in replies]
        sites_seen.append(sorted(int(m["site"]) for m in ms))
        n = sum(float(m[weight_key]) for m in ms)
        loss = sum(float(m["train_loss"]) * float(m[weight_key]) for m in ms) / max(n, 1.0)
        return MetricRecord({"train_loss": loss, weight_key: n})

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        logits = evaluate_state(cfg, arrays.to_torch_state_dict(), images[idx["test"]])
        m = classification_metrics(y[idx["test"]], softmax(logits), n_boot=0)
        keys = ("accuracy", "balanced_accuracy", "macro_auc")
        per_round.append({"round": server_round, **{k: m[k] for k in keys}})
        log.info("round %d: test macro AUC %s", server_round, m["macro_auc"])
        return MetricRecord({k: float(m[k]) if m[k] is not None else -1.0 for k in keys})

    final: dict[str, ArrayRecord] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        n_train = max(1, round(fraction * sites))
        common = {
            "fraction_train": fraction,
            "fraction_evaluate": 0.0,
            "min_train_nodes": n_train,
            "min_evaluate_nodes": 0,
            "min_available_nodes": sites,
            "train_metrics_aggr_fn": train_metrics,
        }
        strat = FedProx(proximal_mu=proximal_mu, **common) if strategy == "fedprox" else FedAvg(**common)
        result = strat.start(
            grid=grid,
            initial_arrays=ArrayRecord(net.state_dict()),
            num_rounds=rounds,
            train_config=ConfigRecord({"spec": str(spec), "local-epochs": local_epochs}),
            evaluate_fn=evaluate_fn,
        )
        final["arrays"] = result.arrays

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=sites,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    if "arrays" not in final:
        raise RuntimeError("the federated simulation ended without a global model")
    state = final["arrays"].to_torch_state_dict()
    net.load_state_dict(state)
    save_checkpoint(
        paths.best, {"state_dict": net.state_dict(), "meta": {"model": cfg.model, "epoch": rounds}}
    )
    extra = {
        "split_mode": f"grouped; federated simulation over {sites} sites",
        "leakage": leakage_report(rows, assignment),
        "data": {"n_images": len(rows), "classes": {c: int(np.sum(y == k)) for k, c in enumerate(CLASSES)}},
    }
    run = run_record(cfg, spec_m, pinfo, pre, rows, assignment, extra, False)
    n_val_groups = len({rows[i].group_id for i in idx["val"]})
    temperature, rule, report = fit_operating_point(
        evaluate_state(cfg, state, images[idx["val"]]),
        y[idx["val"]],
        np.array([rows[i].group_id for i in idx["val"]]),
        target_sensitivity=cfg.target_sensitivity,
        target_normal_recall=cfg.target_normal_recall,
        case_aggregation=cfg.case_aggregation,
        fitted_on=f"validation split ({n_val_groups} scan groups, held by the coordinator)",
    )
    run.update(
        calibration=report,
        decision_rule=rule.to_dict(),
        training={
            "epochs_run": rounds * local_epochs,
            "best_epoch": rounds,
            "threads": torch.get_num_threads(),
            "fit_seconds": round(time.time() - t0, 1),
            "total_seconds": round(time.time() - t0, 1),
        },
        federated={
            "engine": "Flower simulation (Message API)",
            "strategy": strategy,
            "proximal_mu": proximal_mu if strategy == "fedprox" else None,
            "sites": sites,
            "rounds": rounds,
            "local_epochs": local_epochs,
            "fraction_train": fraction,
            "dirichlet_alpha": alpha,
            "site_summary": site_summary([rows[i] for i in idx["train"]], site_of),
            "per_round_test": per_round,
            "sites_per_round": sites_seen,
            "batch_norm": "FedAvg averages batch-norm statistics with the weights",
            "differential_privacy": None,
        },
    )
    write_json(paths.run_json, run)
    write_json(paths.root / "rounds.json", per_round)
    predictor = Predictor(net, cfg.model, pre, temperature, rule, run)
    metrics = evaluate_test_split(predictor, cfg, root, [rows[i] for i in idx["test"]], paths, progress)
    write_run_report(paths)
    return metrics
