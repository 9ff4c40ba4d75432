"""Campaigns: many (scenario, seed) trials on an executor (local processes or Ray), with a summary.

`python -m harness campaign SCENARIO... --seeds A..B [-j N] [--executor local|ray [--address ADDR]]
[--junit FILE]`. See `core` (the campaign dir, interrupts), `trial` (one trial,
shipped reports) and `summary` (table, JUnit XML); the trials run on an
executor of `harness.executors`.
"""

from .core import CAMPAIGN_ENV, CampaignInterrupted, load_summary, parse_seeds, run_campaign
from .summary import exit_code, summarize, summary_table, write_junit
from .trial import STATUSES, run_trial

__all__ = ["CAMPAIGN_ENV", "CampaignInterrupted", "STATUSES", "exit_code", "load_summary", "parse_seeds",
           "run_campaign", "run_trial", "summarize", "summary_table", "write_junit"]
