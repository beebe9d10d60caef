"""``python -m lungct ...`` (and ``torchrun ... -m lungct train ...``): the command line."""

import sys

from lungct.cli import main

if __name__ == "__main__":
    sys.exit(main())
