"""`python -m harness.certify module:Factory ...` (same as `python -m harness certify`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
