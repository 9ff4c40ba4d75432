"""Suite-wide pytest settings."""

import os


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: three xdist workers for every two cores.

    About half of the suite's wall time is waiting (store servers, Ray, child
    processes, runs being killed and restarted), so a third worker on two
    cores fills it: the full suite took 544 s with two workers and 470 s with
    three on the 2-core VM. Two per core was slower (its timing-heavy tests
    fought for the cores).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, (3 * cores) // 2)
