"""Suite-wide pytest hooks: the longest tests start first.

With xdist the longest tests are handed out first, so none of them starts last and runs alone
at the end. (Two workers per core instead of one made the suite slower here: the loaded-machine
tier-2 test, already the longest, took 263 s instead of 150 to 170.)
"""

from __future__ import annotations

import os

#: Files whose tests take tens of seconds to minutes (see `pytest --durations`): they go first.
LONG_FIRST = ("test_certify_load.py", "test_certify_specforge.py", "test_certify_cli.py", "test_certify_network.py",
              "test_campaign_ray.py", "test_powercut_engine.py", "test_simulate_powercut.py", "test_exhaustive.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(LONG_FIRST)))  # stable
