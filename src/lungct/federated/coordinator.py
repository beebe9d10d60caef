"""Flower adapter, coordinator side: the strategy, the rounds and the run folder, shared by the
simulation (`lungct federated simulate`) and the deployment's ServerApp (`lungct federated server`).

The coordinator holds labelled held-out scan groups of its own: a validation part, on which the
final model's temperature and decision rule are fitted, and a test part, on which every round's
global model and the final decision rule are measured. It never sees a site's images; it receives
weights, slice counts and training losses.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedProx,
    Strategy,
)

from lungct import CLASSES
from lungct.config import TrainConfig
from lungct.data.manifest import ManifestRow
from lungct.data.splits import leakage_report, write_split
from lungct.errors import ConfigError
from lungct.evaluation.metrics import classification_metrics, softmax
from lungct.evaluation.operating import fit_operating_point
from lungct.federated.task import evaluate_state, refresh_batch_norm
from lungct.model.network import build_network
from lungct.model.predictor import Predictor
from lungct.model.registry import get_spec
from lungct.model.train import load_images
from lungct.pipeline.training import evaluate_test_split, preprocess_config, run_record, write_run_report
from lungct.runs import RunPaths, save_checkpoint, write_json

log = logging.getLogger("lungct")

STRATEGIES = ("fedavg", "fedprox")
ROUND_KEYS = ("accuracy", "balanced_accuracy", "macro_auc")


@dataclass(frozen=True)
class RoundPlan:
    """How the federation trains: strategy, rounds, local work, sampling, batch norm, privacy."""

    sites: int
    rounds: int = 3
    local_epochs: int = 2
    fraction: float = 1.0
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    fedbn: bool = False
    dp_noise: float = 0.0
    """Gaussian noise multiplier of central DP (server-side fixed clipping); 0 = no DP."""
    dp_clip: float = 1.0
    """L2 clipping norm of each site's update (DP only)."""
    dp_delta: float = 1e-5
    round_timeout_s: float = 3600.0
    """A round waits at most this long for replies; sites that do not answer are left out."""
    min_sites: int | None = None
    """Fewest sites a round may run with once training has started (None = all ``sites``): a site that
    drops out is then left out of later rounds instead of stalling them."""
    connect_timeout_s: float = 600.0
    """How long the coordinator waits for all ``sites`` to connect before the first round."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.sites < 1 or self.rounds < 1 or self.local_epochs < 1:
            raise ConfigError("sites, rounds and local epochs must be >= 1")
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.dp_noise < 0 or self.dp_clip <= 0:
            raise ConfigError("DP needs noise multiplier >= 0 and clipping norm > 0")
        if self.min_sites is not None and not 1 <= self.min_sites <= self.sites:
            raise ConfigError(f"min_sites must be in [1, {self.sites}], got {self.min_sites}")

    @property
    def sites_per_round(self) -> int:
        return max(1, round(self.fraction * self.sites))

    @property
    def quorum(self) -> int:
        """Sites that must be connected for a round to start."""
        return self.sites if self.min_sites is None else self.min_sites


@dataclass
class Heldout:
    """The coordinator's own labelled scan groups: rows, cached model-size images and the split."""

    root: Path
    rows: list[ManifestRow]
    assignment: list[str]
    images: np.ndarray
    """uint8 (N, S, S); zero for rows outside val/test."""
    labels: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.labels = np.array([r.label for r in self.rows])

    def index(self, split: str) -> np.ndarray:
        return np.flatnonzero(np.array(self.assignment) == split)


def load_heldout(
    cfg: TrainConfig, root: Path, rows: list[ManifestRow], assignment: list[str], progress: bool
):
    """Cache the val and test images at the model's input size."""
    pre = preprocess_config(cfg, get_spec(cfg.model).input_size)
    images = np.zeros((len(rows), pre.size, pre.size), np.uint8)
    held = np.flatnonzero(np.isin(np.array(assignment), ["val", "test"]))
    images[held] = load_images([root / rows[i].path for i in held], pre, progress=progress)
    return Heldout(root, rows, assignment, images)


def make_strategy(plan: RoundPlan, train_metrics: Callable) -> tuple[Strategy, Any]:
    """The Flower strategy for ``plan`` (FedAvg or FedProx, optionally wrapped in central DP) and the
    privacy accountant (None without DP or without Flower's accounting backend)."""
    common = {
        "fraction_train": plan.fraction,
        "fraction_evaluate": 0.0,
        "min_train_nodes": min(plan.sites_per_round, plan.quorum),
        "min_evaluate_nodes": 0,
        "min_available_nodes": plan.quorum,
        "train_metrics_aggr_fn": train_metrics,
        # client-level DP accounting needs every site weighted equally, not by its slice count
        "weighted_by_key": "unit-weight" if plan.dp_noise > 0 else "num-examples",
    }
    base: Strategy = (
        FedProx(proximal_mu=plan.proximal_mu, **common) if plan.strategy == "fedprox" else FedAvg(**common)
    )
    if plan.dp_noise <= 0:
        return base, None
    accountant = _accountant(plan)
    dp = DifferentialPrivacyServerSideFixedClipping(
        base, plan.dp_noise, plan.dp_clip, plan.sites_per_round, accountant=accountant
    )
    return dp, accountant


def _accountant(plan: RoundPlan) -> Any:
    """Flower's RDP accountant over the federation's sites, or None (with a warning) when absent."""
    try:
        from flwr.supercore.privacy_accounting import (
            NeighboringRelation,
            PrivacyConfig,
            SamplingMethod,
        )
        from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

        return RdpAccountant(
            PrivacyConfig(
                target_delta=plan.dp_delta,
                population_size=plan.sites,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
            )
        )
    except ImportError as exc:  # dp-accounting is an optional dependency of Flower
        log.warning("differential privacy without an accountant (%s): epsilon is not reported", exc)
        return None


def usable_state(
    cfg: TrainConfig, plan: RoundPlan, held: Heldout, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The global weights as the coordinator evaluates and ships them: under DP with batch-norm
    statistics re-estimated on its validation images (unlabelled use), else unchanged."""
    if plan.dp_noise <= 0:
        return state
    return refresh_batch_norm(cfg, state, held.images[held.index("val")])


@dataclass
class RoundLog:
    """What the coordinator records each round: test metrics of the global model and who took part."""

    per_round: list[dict[str, Any]] = field(default_factory=list)
    sites_seen: list[list[int]] = field(default_factory=list)
    slices: dict[int, int] = field(default_factory=dict)
    """Training slices each site reported (the only thing the coordinator learns about its data)."""
    last_state: tuple[int, dict[str, torch.Tensor]] | None = None
    """(round, usable global state) of the latest evaluation, reused for the final weights."""

    def train_metrics(self, replies: list, weight_key: str) -> MetricRecord:
        """Aggregate the sites' training losses and remember which sites replied."""
        ms = [r["metrics"] for r in replies]
        self.sites_seen.append(sorted(int(m["site"]) for m in ms))
        self.slices.update({int(m["site"]): int(m["num-examples"]) for m in ms})
        n = sum(float(m[weight_key]) for m in ms)
        loss = sum(float(m["train_loss"]) * float(m[weight_key]) for m in ms) / max(n, 1.0)
        return MetricRecord({"train_loss": loss, weight_key: n})

    def evaluator(
        self, cfg: TrainConfig, plan: RoundPlan, held: Heldout
    ) -> Callable[[int, ArrayRecord], MetricRecord]:
        test = held.index("test")

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            state = usable_state(cfg, plan, held, arrays.to_torch_state_dict())
            self.last_state = (server_round, state)
            logits = evaluate_state(cfg, state, held.images[test])
            m = classification_metrics(held.labels[test], softmax(logits), n_boot=0)
            self.per_round.append({"round": server_round, **{k: m[k] for k in ROUND_KEYS}})
            log.info("round %d: test macro AUC %s", server_round, m["macro_auc"])
            return MetricRecord({k: float(m[k]) if m[k] is not None else -1.0 for k in ROUND_KEYS})

        return evaluate_fn


def wait_for_sites(grid: Grid, plan: RoundPlan) -> None:
    """Wait until all sites are connected, or until the connect timeout with at least the quorum."""
    deadline = time.monotonic() + plan.connect_timeout_s
    while (n := len(list(grid.get_node_ids()))) < plan.sites:
        if time.monotonic() > deadline:
            if n >= plan.quorum:
                log.warning(
                    "starting with %d of %d sites after %.0f s", n, plan.sites, plan.connect_timeout_s
                )
                return
            raise ConfigError(
                f"only {n} of {plan.sites} sites connected in {plan.connect_timeout_s:.0f} s "
                f"(need at least {plan.quorum})"
            )
        time.sleep(1.0)


def run_rounds(
    grid: Grid,
    cfg: TrainConfig,
    plan: RoundPlan,
    held: Heldout,
    initial: dict[str, torch.Tensor],
    train_config: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], RoundLog, dict[str, Any] | None]:
    """Run ``plan.rounds`` rounds on ``grid``; returns (final global state, round log, privacy report)."""
    wait_for_sites(grid, plan)
    record = RoundLog()
    strategy, accountant = make_strategy(plan, record.train_metrics)
    config = {
        "train-config": json.dumps(cfg.to_dict()),
        "local-epochs": plan.local_epochs,
        "proximal-mu": plan.proximal_mu if plan.strategy == "fedprox" else 0.0,
        "fedbn": plan.fedbn,
        **train_config,
    }
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial),
        num_rounds=plan.rounds,
        timeout=plan.round_timeout_s,
        train_config=ConfigRecord(config),
        evaluate_fn=record.evaluator(cfg, plan, held),
    )
    privacy = None
    if plan.dp_noise > 0:
        privacy = {
            "mechanism": "central DP, server-side fixed clipping of each site's update (Flower)",
            "noise_multiplier": plan.dp_noise,
            "clipping_norm": plan.dp_clip,
            "sites_per_round": plan.sites_per_round,
            "unit": "site (client-level DP over a population of sites)",
        }
        if accountant is not None:
            spent = accountant.get_privacy_spent()
            privacy.update(epsilon=spent.epsilon, delta=spent.delta, accounting=spent.accounting_method)
        else:
            privacy.update(epsilon=None, delta=None, accounting="not available")
        privacy["batch_norm"] = "statistics re-estimated on the coordinator's validation images"
    if record.last_state is not None and record.last_state[0] == plan.rounds:
        final = record.last_state[1]  # the last round's evaluation already made these weights usable
    else:
        final = usable_state(cfg, plan, held, result.arrays.to_torch_state_dict())
    return final, record, privacy


def finish_run(
    cfg: TrainConfig,
    paths: RunPaths,
    held: Heldout,
    state: dict[str, torch.Tensor],
    plan: RoundPlan,
    record: RoundLog,
    *,
    engine: str,
    sites_info: dict[str, Any],
    privacy: dict[str, Any] | None,
    t0: float,
    progress: bool,
) -> dict[str, Any]:
    """Write what `lungct train` writes: checkpoint, run.json with the operating point fitted on the
    coordinator's validation groups, rounds.json, test-split evaluation and the report."""
    net, spec_m, pinfo = build_network(cfg.model, "none")
    net.load_state_dict(state)
    save_checkpoint(
        paths.best, {"state_dict": net.state_dict(), "meta": {"model": cfg.model, "epoch": plan.rounds}}
    )
    rows, assignment, y = held.rows, held.assignment, held.labels
    extra = {
        "split_mode": f"grouped; federated over {plan.sites} sites ({engine})",
        "leakage": leakage_report(rows, assignment),
        "data": {"n_images": len(rows), "classes": {c: int(np.sum(y == k)) for k, c in enumerate(CLASSES)}},
    }
    pre = preprocess_config(cfg, spec_m.input_size)
    run = run_record(cfg, spec_m, pinfo, pre, rows, assignment, extra, False)
    val = held.index("val")
    n_val_groups = len({rows[i].group_id for i in val})
    temperature, rule, report = fit_operating_point(
        evaluate_state(cfg, state, held.images[val]),
        y[val],
        np.array([rows[i].group_id for i in val]),
        target_sensitivity=cfg.target_sensitivity,
        target_normal_recall=cfg.target_normal_recall,
        case_aggregation=cfg.case_aggregation,
        fitted_on=f"validation split ({n_val_groups} scan groups, held by the coordinator)",
    )
    run.update(
        calibration=report,
        decision_rule=rule.to_dict(),
        training={
            "epochs_run": plan.rounds * plan.local_epochs,
            "best_epoch": plan.rounds,
            "threads": torch.get_num_threads(),
            "fit_seconds": round(time.time() - t0, 1),
            "total_seconds": round(time.time() - t0, 1),
        },
        federated={
            "engine": engine,
            "strategy": plan.strategy,
            "proximal_mu": plan.proximal_mu if plan.strategy == "fedprox" else None,
            "sites": plan.sites,
            "rounds": plan.rounds,
            "local_epochs": plan.local_epochs,
            "fraction_train": plan.fraction,
            "round_timeout_s": plan.round_timeout_s,
            **sites_info,
            "per_round_test": record.per_round,
            "sites_per_round": record.sites_seen,
            "batch_norm": (
                "FedBN: each site keeps its own batch-norm layers; the global model's are the average"
                if plan.fedbn
                else "FedAvg averages batch-norm weights and statistics with the other weights"
            ),
            "differential_privacy": privacy,
        },
    )
    write_json(paths.run_json, run)
    write_json(paths.root / "rounds.json", record.per_round)
    predictor = Predictor(net, cfg.model, pre, temperature, rule, run)
    test_rows = [rows[i] for i in held.index("test")]
    metrics = evaluate_test_split(predictor, cfg, held.root, test_rows, paths, progress)
    write_run_report(paths)
    write_split(paths.split, rows, assignment)
    return metrics
