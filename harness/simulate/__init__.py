"""Simulation engine: thousands of crash schedules a minute in one process.

`engine.Simulation(workload, backend).run(ops)` runs one schedule of the
reference producer and consumer (steppable objects) under a deterministic
scheduler; `search.search(...)` drives schedules from Hypothesis and shrinks a
failure; `cli.main` is `python -m harness simulate`.
"""

from .engine import DEFAULT_WORKLOAD, SimResult, Simulation, format_op, points_for

__all__ = ["DEFAULT_WORKLOAD", "Simulation", "SimResult", "format_op", "points_for"]
