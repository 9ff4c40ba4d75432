"""P4 dedup: exactly one commit per sample id returns fresh.

Model
-----
The store's `commit_samples` is an idempotent set-add: over the life of one
ledger, for every sample id exactly one call returns `fresh=True` for it
(across processes, incarnations and concurrent callers; a repeated id inside
one batch is fresh once). A `commit` event (`ids`, `fresh`, same order) is a
call that returned. A ledger ends only when a volatile store loses it: with
`final["durable_store"]` False, a supervisor `kill` of a `store*` target, a
`powercut` that killed the store server, or a restarted `store_server`
incarnation starts a new ledger (epoch), in which every
id may be fresh once again. With a durable store there is one ledger.

A call whose effect reached the store but whose process was killed before the
`commit` event was written leaves no trace: its fresh flag is lost, and the
next call for those ids returns not-fresh. The producer re-commits exactly its
interrupted batch in the first commit of its next incarnation, so ids first
seen (in an epoch) in the first commit event of an incarnation > 0 of a
committer are exempt from (2). An id in `committed_ids` with no commit event
at all is fine (crash after the store write, before the event).

A networked store's commit that failed on the network and never returned
(a `store_call` event of `commit_samples`/`commit_sample` with outcome
`failed`, or `indeterminate` with no `commit` event of the same ids after it
in that incarnation) may or may not have been applied: its ids are exempt from
(2) too. A commit that
returned after failed attempts (`ok`) is judged by its answer like any other:
a retry that answers "not fresh" for ids its own lost attempt committed is
(2).

Operations read
---------------
* `commit` events of any process (`ids`, `fresh`); `store_call` events of commits (`outcome`, `ids`);
* supervisor `kill` (target) and `powercut` (killed), `store_server` `start` (inc);
* final `durable_store`, `committed_ids`.

Anomalies
---------
1. `fresh_twice`: an id reported fresh by two returned commits (or twice in
   one batch) of one ledger; names both commit lines and incarnations.
2. `never_fresh`: an id with returned commits in a ledger, all not fresh, and
   not exempt as above: the one fresh answer is missing.
3. `malformed_commit`: a commit event whose `fresh` list does not match `ids`.
"""

from __future__ import annotations

from . import Anomaly, by_line, context, finish, incarnation, ledger_losses

PROP = "P4"
NAME = "exactly_one_fresh_commit"


def _ledger_events(ctx, durable):
    if durable:
        return []
    out = ledger_losses(ctx, durable)
    out += [e for e in ctx.events("store_server", "start") if int(e.get("inc", 0)) > 0]
    return out


def check(history, final, ctx=None):
    ctx = context(history, final, ctx)
    final = ctx.final
    durable = bool(final.get("durable_store", True))
    commits = [e for e in ctx.history if e.get("ev") == "commit"] if _multi_committer(ctx) \
        else ctx.events("producer", "commit")
    events = sorted(commits + _ledger_events(ctx, durable), key=by_line)
    anomalies = []
    seen_inc = {}  # proc -> set of incs with a commit already
    unresolved = _unresolved_commit_ids(ctx)
    n_commits = n_fresh = n_ids = 0
    epochs = [[]]  # commit events per ledger epoch
    for e in events:
        if e.get("ev") == "commit":
            epochs[-1].append(e)
        else:
            epochs.append([])
    for epoch, evs in enumerate(epochs):
        fresh_by = {}  # sid -> first commit event that said fresh
        ids_seen = set()
        exempt = set()  # ids first seen in the replay commit of a restarted incarnation
        for e in evs:
            n_commits += 1
            ids = e.get("ids") or []
            fresh = e.get("fresh")
            proc, inc = e.get("proc"), int(e.get("inc", 0))
            incs = seen_inc.setdefault(proc, set())
            if inc > 0 and inc not in incs:
                exempt.update(sid for sid in ids if sid not in ids_seen)
            incs.add(inc)
            if fresh is None or len(fresh) != len(ids):
                anomalies.append(Anomaly(
                    "malformed_commit",
                    f"commit by {incarnation(e)} at line {e.get('line')} has {len(ids)} ids but fresh={fresh!r}",
                    sample_ids=list(ids), incarnations=[incarnation(e)], lines=[e.get("line", 0)]))
                continue
            ids_seen.update(ids)
            if all(fresh) and fresh_by.keys().isdisjoint(ids) and len(set(ids)) == len(ids):
                fresh_by.update(dict.fromkeys(ids, e))  # the common case, without a per-id loop
                n_fresh += len(ids)
                continue
            for sid, f in zip(ids, fresh):
                if not f:
                    continue
                n_fresh += 1
                prev = fresh_by.get(sid)
                if prev is None:
                    fresh_by[sid] = e
                    continue
                anomalies.append(Anomaly(
                    "fresh_twice",
                    f"sample {sid} reported fresh twice in ledger epoch {epoch}: commit by {incarnation(prev)} "
                    f"at line {prev.get('line')} and commit by {incarnation(e)} at line {e.get('line')}",
                    sample_ids=[sid], incarnations=list(dict.fromkeys([incarnation(prev), incarnation(e)])),
                    lines=[prev.get("line", 0), e.get("line", 0)]))
        n_ids += len(ids_seen)
        never = ids_seen.difference(fresh_by, exempt, unresolved)
        if never:
            first = {}
            for e in reversed(evs):
                first.update(dict.fromkeys(e.get("ids") or (), e))
            for sid in sorted(never, key=lambda x: (first[x].get("line", 0), x)):
                e = first[sid]
                anomalies.append(Anomaly(
                    "never_fresh",
                    f"sample {sid}: every returned commit in ledger epoch {epoch} says not fresh (first one by "
                    f"{incarnation(e)} at line {e.get('line')}, not the replay of an interrupted batch)",
                    sample_ids=[sid], incarnations=[incarnation(e)], lines=[e.get("line", 0)]))
    counts = {"commit_events": n_commits, "fresh_flags": n_fresh, "ids": n_ids,
              "ids_of_commits_never_returned": len(unresolved),
              "ledger_epochs": len(epochs), "durable_store": durable}
    return finish(PROP, NAME, anomalies, counts)


def _unresolved_commit_ids(ctx) -> set:
    """Ids of commit calls that failed on the network and never returned (their outcome unknown):
    a failed attempt (`store_call`) of a commit not followed, in its process incarnation, by the
    `commit` event of the same ids (the call's return)."""
    pending = {}  # (proc, inc) -> ids of the commit call in flight with a failed attempt
    out = set()
    for e in sorted((e for e in ctx.history if e.get("ev") in ("store_call", "commit")), key=by_line):
        key = (e.get("proc"), e.get("inc"))
        ids = tuple(e.get("ids") or ())
        if e.get("ev") == "commit":
            if pending.get(key) == ids:
                del pending[key]
        elif e.get("call") in ("commit_samples", "commit_sample") and e.get("outcome") == "failed":
            out.update(ids)  # the call raised: it never returns
            pending.pop(key, None)
        elif e.get("call") in ("commit_samples", "commit_sample") and e.get("outcome") == "indeterminate":
            if key in pending and pending[key] != ids:
                out.update(pending[key])  # an earlier call never returned
            pending[key] = ids
    for ids in pending.values():
        out.update(ids)
    return out


def _multi_committer(ctx) -> bool:
    """True when some non-producer role also emits commit events."""
    return any(ev == "commit" and r != "producer" for (r, ev) in ctx.index)
