"""The process engine: real processes, real signals, real devices (its faults: `harness.faults`).

runner      one scenario with one seed: schedule -> run -> history -> checkers -> verdict -> report
run         one run's processes, faults, progress and status in one object (the loop that delivers faults)
supervisor  spawns, signals, restarts and reaps the run's processes (own process group, parent-death signal)
zygote      the client of the fork server (torch preloaded), so a restart takes milliseconds
zygote_server  the fork server process itself
fault_ledger  which planned faults were seen to land, and which were missed and why
powercut    power cuts: every process traced, then frozen, killed, reaped; the work dir rebuilt
work_dir    where a run's work dir lives (a tmpfs when there is one) and what becomes of it at the end
"""
