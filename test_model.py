"""Evaluate a trained model on a dataset folder: a thin wrapper over `lungct evaluate`.

Usage: python test_model.py [--run RUN_DIR] [--data DIR] [--out DIR]
"""

import sys

from lungct.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--run" not in args:
        args += ["--run", "runs/latest"]
    sys.exit(main(["evaluate", *args]))
