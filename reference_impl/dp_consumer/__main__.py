"""`python -m reference_impl.dp_consumer`: the group process."""

import sys

if __name__ == "__main__":
    # The canonical module's main, so that variants patching it reach the code in use.
    from reference_impl.dp_consumer import main as _main

    sys.exit(_main())
