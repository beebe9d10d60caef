"""Train a model: a thin wrapper over `lungct train` (default run folder: runs/latest).

Usage: python train_model.py [--data DIR] [--out RUN_DIR] [any `lungct train` option]
"""

import sys

from lungct.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args:
        args += ["--out", "runs/latest"]
    sys.exit(main(["train", *args]))
