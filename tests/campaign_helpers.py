"""Helpers for the campaign tests: start a campaign CLI, find its dir, find what it left alive."""

import os
import subprocess
import sys
import time

from harness.campaign.reaper import descendants, marked_pids

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_campaign(args, reports, **kw):
    """Start `python -m harness campaign ARGS --reports REPORTS`; its output goes to files next to REPORTS
    (not pipes: a leftover process holding a pipe would hang the test instead of failing it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    base = f"{reports}.{time.monotonic_ns()}"
    with open(base + ".out", "w") as out, open(base + ".err", "w") as err:
        p = subprocess.Popen([sys.executable, "-m", "harness", "campaign", *args, "--reports", str(reports)],
                             stdout=out, stderr=err, env=env, cwd=REPO, **kw)
    p.out_path, p.err_path = base + ".out", base + ".err"
    return p


def finish(p, timeout):
    """Wait for the campaign; return (stdout, stderr)."""
    p.wait(timeout=timeout)
    return output(p)


def output(p):
    with open(p.out_path) as f, open(p.err_path) as g:
        return f.read(), g.read()


def campaign_dirs(reports):
    try:
        return sorted(os.path.join(reports, d) for d in os.listdir(reports) if d.startswith("campaign-"))
    except FileNotFoundError:
        return []


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_running_trial(proc, reports, min_procs=4, timeout=180):
    """Wait until the campaign has a trial whose pipeline processes are running; return (dir, descendants)."""
    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"campaign exited early: {proc.returncode} {output(proc)}")
        dirs = campaign_dirs(reports)
        if not dirs:
            return None
        kids = descendants(proc.pid)
        marked = marked_pids(os.path.basename(dirs[0]))
        busy = [p for p, cmd in marked.items() if "reference_impl.consumer" in cmd]
        return (dirs[0], kids) if busy and len(kids) + len(marked) >= min_procs else None

    return wait_for(ready, timeout, "a running trial")


def alive(pid, start=None):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and (start is None or int(fields[19]) == start)


def leftovers(cdir, seen):
    """Processes still alive that carry the campaign's marker or were seen descending from it."""
    cid = os.path.basename(cdir)
    out = {p: c for p, c in marked_pids(cid).items()}
    out.update({p: "descendant" for p, t in seen.items() if alive(p, t)})
    return out


def wait_no_leftovers(cdir, seen, timeout=30):
    deadline = time.monotonic() + timeout
    left = leftovers(cdir, seen)
    while left and time.monotonic() < deadline:
        time.sleep(0.3)
        left = leftovers(cdir, seen)
    return left


def kill_leftovers(cdir, seen):
    """After the assertion: never let a failing test leak processes into the rest of the suite."""
    import signal

    for pid in leftovers(cdir, seen) if cdir else {}:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
