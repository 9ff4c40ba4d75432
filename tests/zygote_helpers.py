"""Variants used by tests/test_zygote.py to look inside a zygote-launched child.

A variant is loaded inside the child's `main` (reference_impl.variant), so it
sees exactly the environment and module state the child runs with.
"""

import json
import os
import sys


def report_and_exit():
    """Write what the child sees to $ZYGOTE_TEST_OUT, then exit with $ZYGOTE_TEST_CODE."""
    from reference_impl import failpoints

    out = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "cwd": os.getcwd(),
        "argv": sys.argv,
        "failpoints_env": os.environ.get(failpoints.ENV_VAR),
        "failpoints_parsed": failpoints.parse_rules(os.environ.get(failpoints.ENV_VAR) or "[]"),
        "variant_env": os.environ.get("DFH_VARIANT"),
        "incarnation_env": os.environ.get("DFH_INCARNATION"),
        "marker_env": os.environ.get("ZYGOTE_TEST_MARKER"),
        "stdin_is_devnull": os.path.samefile("/proc/self/fd/0", os.devnull),
    }
    print("hello from the child", flush=True)
    with open(os.environ["ZYGOTE_TEST_OUT"], "w") as f:
        json.dump(out, f)
    raise SystemExit(int(os.environ.get("ZYGOTE_TEST_CODE", "0")))
