"""Run the ``gmmserve`` command: ``python -m gmmserve serve --port 0``."""

import sys

from gmmserve.cli import main

if __name__ == "__main__":
    sys.exit(main())
