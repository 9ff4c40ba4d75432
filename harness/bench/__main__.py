"""`python -m harness.bench`: the same as `python -m harness bench`."""

import sys

from harness.bench import main

if __name__ == "__main__":
    sys.exit(main())
