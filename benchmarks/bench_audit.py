"""Wall time of ``run_audit`` on a dataset folder (default: the shared IQ-OTH/NCCD subset).

Usage: python benchmarks/bench_audit.py [--data DIR] [--out DIR] [--cores 2] [--repeat 1]

The process is pinned to ``--cores`` CPUs where the OS allows it (Linux), so the number printed is
what a 2-core machine would see. Outputs go to a temporary folder unless --out is given.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "iq-othnccd"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("LUNGCT_SHARED_DATA", DEFAULT_DATA)))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder not found: {args.data} (pass --data DIR)", file=sys.stderr)
        return 2
    if args.cores > 0 and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[: args.cores]
        os.sched_setaffinity(0, cpus)
        print(f"pinned to CPUs {cpus}")
    t_import = time.perf_counter()
    from lungct.data.audit import run_audit

    print(f"import: {time.perf_counter() - t_import:.2f} s")
    for k in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            out = args.out or Path(tmp) / "audit"
            t0 = time.perf_counter()
            res = run_audit(args.data, out_dir=out, progress=False)
            wall = time.perf_counter() - t0
        g, s = res.summary["groups"], res.summary
        f = g["file_number_check"]
        print(
            f"run {k + 1}: {wall:.2f} s wall for {s['n_images']} images ({s['n_skipped']} skipped); "
            f"{g['n_groups']} groups {g['per_class']}, {g['n_singletons']} singletons; "
            f"threshold {g['threshold']:.3f}, {g['k_neighbours']} neighbours; "
            f"{len(g['label_conflicts'])} label conflicts; "
            f"file-number check: {f['adjacent_pairs_split']}/{f['adjacent_pairs']} adjacent pairs split, "
            f"{f['contiguous_groups']}/{f['groups_checked']} groups contiguous; "
            f"{s['duplicates']['byte']['n_sets']} byte-duplicate sets; "
            f"metadata baseline balanced accuracy {s['metadata_baseline'].get('balanced_accuracy')}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
