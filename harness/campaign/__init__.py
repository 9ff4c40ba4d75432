"""Campaigns: many (scenario, seed) trials on an executor (local processes or Ray), with a summary.

`python -m harness campaign SCENARIO... --seeds A..B [-j N] [--executor local|ray [--address ADDR]]
[--junit FILE]`. See `core` (the campaign dir, interrupts), `executors` (local
pool, Ray tasks, `map_trials`), `trial` (one trial, shipped reports) and
`summary` (table, JUnit XML).
"""

from .core import CAMPAIGN_ENV, CampaignInterrupted, load_summary, parse_seeds, run_campaign
from .executors import EXECUTORS, TrialLost, map_shares, map_trials, split_shares
from .summary import exit_code, summarize, summary_table, write_junit
from .trial import STATUSES, _one, run_trial

__all__ = ["CAMPAIGN_ENV", "CampaignInterrupted", "EXECUTORS", "STATUSES", "TrialLost", "exit_code", "load_summary",
           "map_shares", "map_trials", "parse_seeds", "run_campaign", "run_trial", "split_shares", "summarize",
           "summary_table", "write_junit", "_one"]
