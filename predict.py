"""Classify CT slices: a thin wrapper over `lungct predict`.

Usage: python predict.py --image path/to/slice.jpg [more paths or folders] [--run RUN_DIR] [--json]
"""

import sys

from lungct.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--run" not in args:
        args += ["--run", "runs/latest"]
    sys.exit(main(["predict", *args]))
