"""Bench: the test suite's wall time, the fast lane and the full suite, against their goals.

    python -m harness bench --only suite [--quick]

Runs the README's two pytest commands in the checkout the harness is imported
from: the fast lane (`-m "not slow" -n auto`, the lane before a commit) and,
unless --quick, the full suite (`-n auto`, what CI runs). Each runs in its own
process group with a parent-death signal (killed with the bench), its tmp
dirs under the bench's scratch dir and no cache. The figure is the wall
clock of the whole command, start-up and collection included. A suite that
fails or runs no test gives its time and its summary line but meets no goal:
the time of a broken suite is not a figure to hold anyone to. An installed
copy of the harness (no `tests/` beside the package) skips the section and
says so.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

from .registry import BenchRun, goal, section

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LANES = {
    "fast_lane_s": ("fast lane", ["-m", "not slow", "-n", "auto"]),
    "full_suite_s": ("full suite", ["-n", "auto"]),
}
_SUMMARY = re.compile(r"^=*\s*(\d+ (passed|failed|error).*) in [\d.]+s")


def summary_line(output: str) -> Optional[str]:
    """pytest's last summary (`566 passed, 8 skipped`), without its time; None if there is none."""
    found = None
    for line in output.splitlines():
        m = _SUMMARY.match(line.strip())
        if m:
            found = m.group(1).strip()
    return found


def run_lane(args: List[str], basetemp: str, cwd: str = _REPO_ROOT) -> Dict[str, Any]:
    """One pytest command: its wall seconds, exit code and summary line."""
    from reference_impl.procutil import set_parent_death_signal

    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}", *args]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True, preexec_fn=lambda: set_parent_death_signal(signal.SIGKILL))
    try:
        out, _ = p.communicate()
    except BaseException:  # an interrupted bench takes the suite and everything it started with it
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        raise
    wall = time.monotonic() - t0
    failed = [line.split(" - ")[0].split(" ", 1)[1] for line in out.splitlines()
              if line.startswith(("FAILED ", "ERROR "))]
    return {"command": shlex.join(["python", "-m", "pytest", *args]), "wall_s": round(wall, 1), "rc": p.returncode,
            "summary": summary_line(out) or (out.strip().splitlines() or ["(no output)"])[-1][:300],
            "failed": failed}


@section("suite", 100)
def suite_section(run: BenchRun) -> None:
    if not os.path.isdir(os.path.join(_REPO_ROOT, "tests")):
        run.say(f"test suite: not run (no tests/ beside the harness package in {_REPO_ROOT}: an installed copy)")
        return
    lanes = ["fast_lane_s"] if run.quick else ["fast_lane_s", "full_suite_s"]
    out: Dict[str, Any] = {}
    for key in lanes:
        label, args = LANES[key]
        r = run_lane(args, os.path.join(run.base, key))
        ok = r["rc"] == 0
        out[key] = r
        run.out[key] = r["wall_s"] if ok else None
        verdict = goal(key, r["wall_s"]) if ok else (f"{goal(key, None)} (the suite failed: rc {r['rc']}"
                                                     + (f"; {', '.join(r['failed'])}" if r["failed"] else "") + ")")
        run.say(f"{label} (`{r['command']}`, {os.cpu_count()} CPUs): {r['wall_s']} s, {r['summary']}; {verdict}")
    run.out["suite"] = out
