"""Standalone reproducer scripts written next to a certificate (see `findings`).

Each template is a whole Python program using only the standard library and
the backend's own package: `#HEAD#` is replaced with the constants naming the
store factory (`FACTORY`, `KIND`) and what to reproduce. A script exits 1
while the bug is there and 0 when it is not; `python repro_<n>.py OTHER:Factory`
runs it against another factory (a candidate fix).
"""

_COMMON = '''
import importlib
import os
import shutil
import sys
import tempfile
import threading
import time

#HEAD#
if len(sys.argv) > 1:
    FACTORY = sys.argv[1]


def _resolve(spec):
    mod, _, attr = spec.partition(":")
    obj = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def open_store(d):
    """Build the store the way the certifier did."""
    factory = _resolve(FACTORY)
    if KIND == "class-path":
        return factory(os.path.join(d, "store.db"))
    if KIND == "class-bare":
        return factory()
    return factory(d)
'''

P5_TEMPLATE = '''"""Reproducer: durable_marker() mixes two ack transactions (P5, torn marker read).

Guarantee: every durable_marker() read shows each ack whole or not at all, with
the global_step and optimizer_durable of the newest ack it shows. One acker
records acks (ids w.a<j>.<i>, global_step BASE+j) while this process reads the
marker. Exits 1 at the first torn read, 0 if none is seen in SECONDS.
Usage: python repro.py [module:Factory]   (REPRO_SECONDS overrides the time)
"""
''' + _COMMON + '''
BASE = 7000000
SECONDS = float(os.environ.get("REPRO_SECONDS", "20"))


def ack_ids(j):
    return ["w.a%d.%d" % (j, i) for i in range(1 + j % 11)]


def acker(store, stop_at):
    j = 0
    while time.time() < stop_at:
        j += 1
        store.record_train_ack(ack_ids(j), global_step=BASE + j, optimizer_durable=(j % 2 == 1))


def torn(m):
    acked, step = set(m["acked"]), m["global_step"]
    if step is None:
        return "global_step is None but acked holds %d ids" % len(acked) if acked else None
    j = step - BASE
    ids = ack_ids(j)
    have = sum(1 for i in ids if i in acked)
    if have != len(ids):
        return ("global_step %d is ack %d's, but %d of that ack's %d ids are acked: "
                "the marker mixes two ack transactions" % (step, j, have, len(ids)))
    if ack_ids(j + 1)[0] in acked:
        return "acked holds ack %d's ids but global_step is ack %d's" % (j + 1, j)
    if bool(m["optimizer_durable"]) != (j % 2 == 1):
        return "optimizer_durable is %r, ack %d recorded %r" % (m["optimizer_durable"], j, j % 2 == 1)
    return None


def main():
    d = tempfile.mkdtemp(prefix="repro-p5-")
    pid = None
    try:
        first = open_store(d)  # create the store before the acker starts
        stop_at = time.time() + SECONDS
        if PROFILE == "durable":
            pid = os.fork()
            if pid == 0:
                try:
                    acker(open_store(d), stop_at)
                finally:
                    os._exit(0)
            reader = open_store(d)
        else:
            reader = first
            threading.Thread(target=acker, args=(first, stop_at), daemon=True).start()
        reads = 0
        while time.time() < stop_at:
            m = reader.durable_marker()
            reads += 1
            why = torn(m)
            if why:
                print("BUG (P5 torn marker read) after %d reads: %s" % (reads, why))
                return 1
        print("no torn marker read in %d reads over %.0f s" % (reads, SECONDS))
        return 0
    finally:
        if pid:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
            os.waitpid(pid, 0)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
'''

LIVENESS_TEMPLATE = '''"""Reproducer: a store call does not return (liveness).

Guarantee: every construction and store call returns within the call timeout.
Builds the store as the certifier did, then makes the call that hung. Exits 1
if it has not returned within TIMEOUT_S, 0 if it returns.
Usage: python repro.py [module:Factory]
"""
''' + _COMMON + '''

def call_args():
    ns = {}
    for name in RECORDS:
        mod, _, qual = name.rpartition(".")
        try:
            ns[qual] = getattr(importlib.import_module(mod), qual)
        except Exception:
            pass
    ns["_collect"] = lambda *a, **k: (a, k)
    return eval("_collect(" + ARGS + ")", ns)


def main():
    d = tempfile.mkdtemp(prefix="repro-liveness-")
    state = {}

    def run():
        store = open_store(d)
        state["opened"] = True
        if CALL != "constructor":
            args, kw = call_args()
            getattr(store, CALL)(*args, **kw)
        state["returned"] = True

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(TIMEOUT_S)
    shutil.rmtree(d, ignore_errors=True)
    if not state.get("returned"):
        what = "the constructor" if CALL == "constructor" or not state.get("opened") else CALL + "(" + ARGS[:200] + ")"
        print("BUG (liveness): %s did not return within %g s" % (what, TIMEOUT_S))
        sys.stdout.flush()
        os._exit(1)
    print("%s returned" % CALL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''
