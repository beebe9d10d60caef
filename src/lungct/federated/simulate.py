"""`lungct federated simulate`: sites from scan groups, Flower's simulation engine, a normal run folder.

The grouped split of `lungct train` (same seed) gives train / val / test. The training groups are
dealt to non-IID sites (:mod:`lungct.federated.partition`); each round every sampled site trains
locally (:mod:`lungct.federated.apps`), the strategy averages the weights, and the coordinator
(:mod:`lungct.federated.coordinator`) evaluates the global model on the test split (rounds.json).
The final model's temperature and decision rule are fitted on the validation groups, which the
coordinator holds. The run folder has what `lungct train` writes, so `evaluate`, `predict`,
`explain`, `serve` and the report work on it unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from lungct.config import TrainConfig
from lungct.federated.apps import client_app
from lungct.federated.coordinator import RoundPlan, finish_run, load_heldout, run_rounds
from lungct.federated.partition import partition_sites, site_summary
from lungct.federated.task import write_spec
from lungct.model.network import build_network
from lungct.pipeline.training import make_split, open_run


def simulate(
    cfg: TrainConfig, out_dir: str | Path, plan: RoundPlan, *, alpha: float = 0.5, progress: bool = True
) -> dict[str, Any]:
    """Run a federated simulation of ``plan`` into the run folder ``out_dir``; returns the test metrics."""
    t0 = time.time()
    paths, root, audit = open_run(cfg, out_dir, progress)
    rows = audit.rows
    assignment = make_split(cfg, rows)
    train = np.flatnonzero(np.array(assignment) == "train")
    site_of = partition_sites([rows[i] for i in train], plan.sites, alpha, cfg.seed)
    members = {
        s: [rows[i].path for i, k in zip(train, site_of, strict=True) if k == s] for s in range(plan.sites)
    }
    spec = write_spec(paths.root, cfg, root, members)
    held = load_heldout(cfg, root, rows, assignment, progress)
    initial = build_network(cfg.model, cfg.pretrained)[0].state_dict()
    outcome: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        outcome["state"], outcome["log"], outcome["privacy"] = run_rounds(
            grid, cfg, plan, held, initial, {"spec": str(spec)}
        )

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=plan.sites,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    if "state" not in outcome:
        raise RuntimeError("the federated simulation ended without a global model")
    return finish_run(
        cfg,
        paths,
        held,
        outcome["state"],
        plan,
        outcome["log"],
        engine="Flower simulation (Message API)",
        sites_info={
            "dirichlet_alpha": alpha,
            "site_summary": site_summary([rows[i] for i in train], site_of),
        },
        privacy=outcome["privacy"],
        t0=t0,
        progress=progress,
    )
