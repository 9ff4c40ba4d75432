"""Suite-wide pytest hooks: how many xdist workers `-n auto` starts, and which tests start first.

Half the suite's time is waiting (servers starting, Ray's start and shutdown, network trials
sleeping through their faults, processes polled), so `-n auto` starts two workers per core:
while one waits, another computes. The longest tests are handed out first, so none of them
starts last and runs alone at the end.
"""

from __future__ import annotations

import os

#: Files whose tests take tens of seconds to minutes (see `pytest --durations`): they go first.
LONG_FIRST = ("test_certify_load.py", "test_certify_specforge.py", "test_certify_cli.py", "test_certify_network.py",
              "test_campaign_ray.py", "test_powercut_engine.py", "test_simulate_powercut.py", "test_exhaustive.py")


def pytest_xdist_auto_num_workers(config):
    return 2 * (os.cpu_count() or 1)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(LONG_FIRST)))  # stable
