"""Suite-wide pytest settings."""

import os


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: three xdist workers for every two cores.

    Part of the suite's wall time is waiting (store servers, Ray, child
    processes, runs being killed and restarted, planned pauses): with two
    workers the 2-core VM's CPUs were 19% idle over a 490 s run, and a third
    worker fills that. Two per core was slower (its timing-heavy tests fought
    for the cores). A third worker was tried before and dropped when a late
    kill missed its process's end on the busier machine; a process now waits
    at its end for a kill still planned for it (`hold`, docs/history.md).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, (3 * cores) // 2)
