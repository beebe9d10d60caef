"""One process vs DistributedDataParallel over N processes (`lungct train --nproc N`), same data and seed.

Runs `lungct train` twice on the same data (default: the development subset) and prints wall time and
the test-split metrics of the shipped decision side by side. Both runs use the same global batch and
epochs; one process gets all threads, each DDP process 1 thread (so the core count is the same).
Extra arguments go to both `lungct train` calls, e.g. ``--cross-fit-folds 0`` to time training alone.

    .venv/bin/python benchmarks/bench_ddp.py [--data DIR] [--out runs/bench_ddp] [--nproc 2] [-- ARGS]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lungct.evaluation.evaluate import decision_columns

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "iq-othnccd"


def train(data: str, out: Path, nproc: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "lungct", "train", "--data", data, "--out", str(out), "--quiet", *extra]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    t0 = time.time()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.time() - t0
    m = json.loads((out / "eval" / "test" / "metrics.json").read_text())
    return {"wall_s": round(wall, 1), "macro_auc": m["macro_auc"], **decision_columns(m["decision"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default="runs/bench_ddp")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="arguments for both `lungct train` calls")
    args = ap.parse_args()
    extra = [a for a in args.extra if a != "--"]
    out = Path(args.out)
    rows = {
        "1 process": train(args.data, out / "single", 1, extra),
        f"{args.nproc} processes (DDP)": train(args.data, out / "ddp", args.nproc, extra),
    }
    cols = list(next(iter(rows.values())))
    print("\n| run | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in rows.items():
        print(
            f"| {name} | "
            + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols)
            + " |"
        )
    (out / "summary.json").write_text(json.dumps({"extra": extra, **rows}, indent=1))


if __name__ == "__main__":
    main()
