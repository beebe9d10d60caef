"""Flower ServerApp of a deployment (`lungct federated server`): the SuperLink starts it for each run.

Its run config (written by :mod:`lungct.federated.deploy`) carries ``train-config`` (TrainConfig JSON;
its ``data`` is the coordinator's own labelled held-out folder), ``plan`` (RoundPlan JSON) and ``out``
(the run folder). The held-out scan groups are split in half by group: validation (temperature and
decision rule) and test (per-round and final metrics).
"""

from __future__ import annotations

import json
import time

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from lungct.config import make_config
from lungct.data.splits import grouped_split
from lungct.federated.coordinator import RoundPlan, finish_run, load_heldout, run_rounds
from lungct.model.network import build_network
from lungct.pipeline.training import open_run

RENAME = {"train": "val", "val": "test"}
"""The coordinator's folder is all held out: a grouped 50/50 split whose halves validate and test."""

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Coordinate one federated training run and write its run folder."""
    t0 = time.time()
    rc = context.run_config
    cfg = make_config(json.loads(str(rc["train-config"])))
    plan = RoundPlan(**json.loads(str(rc["plan"])))
    paths, root, audit = open_run(cfg, str(rc["out"]), progress=False)
    rows = audit.rows
    halves = grouped_split(rows, fractions=(0.5, 0.5, 0.0), seed=cfg.seed)
    assignment = [RENAME[h] for h in halves]
    held = load_heldout(cfg, root, rows, assignment, progress=False)
    initial = build_network(cfg.model, cfg.pretrained)[0].state_dict()
    state, record, privacy = run_rounds(grid, cfg, plan, held, initial, {})
    finish_run(
        cfg,
        paths,
        held,
        state,
        plan,
        record,
        engine="Flower deployment (SuperLink, SuperNodes, Message API)",
        sites_info={"site_training_slices": record.slices},
        privacy=privacy,
        t0=t0,
        progress=False,
    )
