"""Federated vs centralised vs single-site training of the default model on the same grouped split.

Three non-IID sites (Dirichlet over the training scan groups of `lungct train`'s split, seed 0), the
same training budget in epochs for every arm (rounds x local epochs), the same initial weights, the same
training step (:func:`lungct.federated.task.local_train` -> ``fit``), and the same evaluation: temperature
and decision rule fitted on the validation groups, metrics on the test groups. Arms:

- ``fedavg`` and ``fedbn``: Flower simulation, 3 sites x R rounds x E local epochs;
- ``central``: all training groups in one place, R x E epochs;
- ``site0..2``: each site alone, R x E epochs.

Not a test: run it by hand (about 15-25 min on 2 cores with Lite0 at 224 px), e.g.

    .venv/bin/python benchmarks/bench_federated.py [--data DIR] [--out runs/bench_fed] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lungct.config import make_config
from lungct.evaluation.evaluate import decision_columns
from lungct.federated.coordinator import RoundLog, RoundPlan, finish_run, load_heldout
from lungct.federated.partition import partition_sites
from lungct.federated.simulate import simulate
from lungct.federated.task import local_train, site_data, write_spec
from lungct.model.network import build_network
from lungct.pipeline.training import make_split, open_run

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "iq-othnccd"


def summary(metrics: dict) -> dict[str, float | None]:
    """The comparison columns: arg-max macro AUC and the shipped decision's recalls and sens/spec."""
    return {"macro_auc": metrics.get("macro_auc"), **decision_columns(metrics["decision"])}


def alone(cfg, out: Path, name: str, spec: Path, sites: list[int], epochs: int) -> dict:
    """Train from the same initial weights on the union of ``sites`` only; same evaluation."""
    t0 = time.time()
    paths, root, audit = open_run(cfg, out / name, progress=False)
    rows = audit.rows
    held = load_heldout(cfg, root, rows, make_split(cfg, rows), progress=False)
    parts = [site_data(str(spec), s) for s in sites]
    images = np.concatenate([p[1] for p in parts])
    labels = np.concatenate([p[2] for p in parts])
    initial = build_network(cfg.model, cfg.pretrained)[0].state_dict()
    state, _ = local_train(cfg, initial, images, labels, epochs)
    plan = RoundPlan(sites=len(sites), rounds=1, local_epochs=epochs)
    m = finish_run(
        cfg, paths, held, state, plan, RoundLog(), engine=f"no federation: {name}",
        sites_info={"trained_on_sites": sites}, privacy=None, t0=t0, progress=False,
    )  # fmt: skip
    return {"seconds": round(time.time() - t0, 1), "train_slices": len(labels), **summary(m)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default="runs/bench_fed")
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--arms", default="fedavg,fedbn,central,sites")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = ap.parse_args()
    over = dict(kv.split("=", 1) for kv in args.overrides)
    cfg = make_config({"data": args.data, **over})
    out = Path(args.out)
    arms = args.arms.split(",")
    results: dict[str, dict] = {}
    budget = args.rounds * args.local_epochs

    for name, fedbn in (("fedavg", False), ("fedbn", True)):
        if name not in arms:
            continue
        t0 = time.time()
        plan = RoundPlan(sites=args.sites, rounds=args.rounds, local_epochs=args.local_epochs, fedbn=fedbn)
        m = simulate(cfg, out / name, plan, alpha=args.alpha, progress=False)
        run = json.loads((out / name / "run.json").read_text())
        results[name] = {
            "seconds": round(time.time() - t0, 1),
            "train_slices": sum(sum(v for k, v in s.items() if k != "groups")
                                for s in run["federated"]["site_summary"]),
            **summary(m),
        }  # fmt: skip
        print(name, json.dumps(results[name]), flush=True)

    # the sites of the simulation (same seed -> same split and partition), for the other arms
    paths, root, audit = open_run(cfg, out / "partition", progress=False)
    rows = audit.rows
    assignment = make_split(cfg, rows)
    train = np.flatnonzero(np.array(assignment) == "train")
    site_of = partition_sites([rows[i] for i in train], args.sites, args.alpha, cfg.seed)
    members = {
        s: [rows[i].path for i, k in zip(train, site_of, strict=True) if k == s] for s in range(args.sites)
    }
    spec = write_spec(paths.root, cfg, root, members)
    if "central" in arms:
        results["central"] = alone(cfg, out, "central", spec, list(range(args.sites)), budget)
        print("central", json.dumps(results["central"]), flush=True)
    if "sites" in arms:
        for s in range(args.sites):
            results[f"site{s}"] = alone(cfg, out, f"site{s}", spec, [s], budget)
            print(f"site{s}", json.dumps(results[f"site{s}"]), flush=True)

    cols = ["seconds", "train_slices", "macro_auc", "decision_accuracy", "normal_recall", "benign_recall",
            "malignant_sens", "malignant_spec"]  # fmt: skip
    print("\n| arm | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in results.items():
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        print(f"| {name} | " + " | ".join(cells) + " |")
    (out / "summary.json").write_text(
        json.dumps({"config": over, "budget_epochs": budget, **results}, indent=1)
    )


if __name__ == "__main__":
    main()
