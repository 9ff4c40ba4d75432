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

TIER1_TEMPLATE = '''"""Reproducer: the minimal tier 1 (contract) steps that break a guarantee.

Replays the steps on a fresh store next to a small model of the contract and
checks the store's observable state after each one (freshness, round trip
field by field, is_committed, committed_count, all_committed_ids order,
durable_marker). Exits 1 at the first difference, 0 if there is none.
Usage: python repro.py [module:Factory]
"""
''' + _COMMON + """
import math


class Bug(Exception):
    pass


def _records():
    ns = {}
    for name in RECORDS:
        mod, _, qual = name.rpartition(".")
        ns[qual] = getattr(importlib.import_module(mod), qual)
    return ns


def same(a, b):
    # field by field after the committed record's own fields, types included
    import dataclasses
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        for f in dataclasses.fields(a):
            x = b.get(f.name, same) if isinstance(b, dict) else getattr(b, f.name, same)
            if x is same or not same(getattr(a, f.name), x):
                return False
        return True
    if isinstance(a, dict):
        return isinstance(b, dict) and set(map(str, a)) == set(map(str, b)) and all(
            same(v, b.get(k, b.get(str(k)))) for k, v in a.items())
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b or (type(a) in (int, float) and type(b) in (int, float)
                                              and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


class Run:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="repro-contract-")
        self.store = open_store(self.dir)
        self.refs, self.order, self.acked, self.step, self.flag = {}, [], set(), None, False

    def state(self, where):
        n = self.store.committed_count()
        if n != len(self.order):
            raise Bug("%s: committed_count() is %r, expected %d" % (where, n, len(self.order)))
        ids = [str(i) for i in self.store.all_committed_ids()]
        if ids != self.order:
            raise Bug("%s: all_committed_ids() is %r, expected %r (first-commit order)" % (where, ids, self.order))
        m = self.store.durable_marker()
        if set(m["acked"]) != self.acked:
            raise Bug("%s: durable_marker()['acked'] is %r, expected %r" % (where, set(m["acked"]), self.acked))
        if m["global_step"] != self.step:
            raise Bug("%s: durable_marker()['global_step'] is %r, expected %r" % (where, m["global_step"], self.step))
        if bool(m["optimizer_durable"]) != self.flag:
            raise Bug("%s: durable_marker()['optimizer_durable'] is %r, expected %r"
                      % (where, m["optimizer_durable"], self.flag))

    def check_ref(self, sid, where):
        if not self.store.is_committed(sid):
            raise Bug("%s: is_committed(%r) is False after it was committed" % (where, sid))
        got = self.store.get_committed(sid)
        if got is None or not same(self.refs[sid], got):
            raise Bug("%s: get_committed(%r) is %r, committed %r" % (where, sid, got, self.refs[sid]))

    def _model_commit(self, refs):
        out = []
        for r in refs:
            fresh = r.sample_id not in self.refs
            if fresh:
                self.refs[r.sample_id] = r
                self.order.append(r.sample_id)
            out.append(fresh)
        return out

    def commit_sample(self, ref):
        where = "commit_sample(%r)" % (ref.sample_id,)
        want = self._model_commit([ref])[0]
        got = self.store.commit_sample(ref)
        if bool(got) != want:
            raise Bug("%s returned %r, expected %r" % (where, got, want))
        self.check_ref(ref.sample_id, where)

    def commit_samples(self, refs):
        where = "commit_samples(%r)" % ([r.sample_id for r in refs],)
        want = self._model_commit(refs)
        fn = getattr(self.store, "commit_samples", None)
        got = [bool(x) for x in fn(list(refs))] if fn else [bool(self.store.commit_sample(r)) for r in refs]
        if got != want:
            raise Bug("%s returned %r, expected %r" % (where, got, want))
        for r in refs:
            self.check_ref(r.sample_id, where)

    def record_train_ack(self, ids, global_step, optimizer_durable):
        self.acked |= set(ids)
        if global_step is not None:
            self.step = global_step
        self.flag = bool(optimizer_durable)
        self.store.record_train_ack(list(ids), global_step=global_step, optimizer_durable=optimizer_durable)

    def lookup(self, sid):
        where = "lookup(%r)" % (sid,)
        if sid in self.refs:
            return self.check_ref(sid, where)
        if self.store.is_committed(sid):
            raise Bug("%s: is_committed is True but it was never committed" % where)
        if self.store.get_committed(sid) is not None:
            raise Bug("%s: get_committed returned a ref but it was never committed" % where)

    def reopen(self):
        close = getattr(self.store, "close", None)
        if callable(close):
            close()
        self.store = open_store(self.dir)
        for sid in self.order:
            self.check_ref(sid, "after reopen")


def main():
    globals().update(_records())
    run = Run()
    try:
        run.state("fresh store")
        for n, line in enumerate(STEPS, 1):
            eval("run." + line, globals(), {"run": run})
            run.state("after step %d (%s)" % (n, line[:80]))
    except Bug as e:
        print("BUG: %s" % e)
        return 1
    finally:
        close = getattr(run.store, "close", None)
        try:
            if callable(close):
                close()
        finally:
            shutil.rmtree(run.dir, ignore_errors=True)
    print("all %d steps behaved as the contract says" % len(STEPS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
"""
