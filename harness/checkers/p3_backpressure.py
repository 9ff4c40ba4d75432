"""P3 exact backpressure.

Model
-----
The producer counts `published` channel records; the consumer publishes its
`consumed` count in a sidecar file (replaced atomically) and the producer reads
it. `in_flight = published - consumed`. With watermarks `high > low` and a
publish batch of `publish_batch` records:

* at every observation `0 <= consumed <= published`;
* the sidecar never goes backwards, across consumer restarts too; the
  producer's readings of it never go backwards either, across producer
  restarts; across a power cut (a supervisor `powercut` event) a reading may
  fall back to the sidecar's durable value, which is at least the last value
  the consumer reported written (`consumed`, `done`, `reconcile.consumed_before`
  before the cut: each is emitted after the replace and its directory fsync),
  never below it;
* the producer publishes only while `in_flight < high`, so after a publish
  `published <= consumed + high + publish_batch`;
* it pauses exactly when `in_flight >= high` and resumes only at
  `in_flight <= low`;
* a completed run ends with `consumed == len(channel records)` (in_flight 0);
* `consumed` counts leading records that are done: a record the consumer took
  is done once its sample's ack is durable, a second copy once the first
  copy's sample is; so a `consumed` value never covers a record that its
  incarnation read (or skipped as a duplicate) before that sample was acked
  (an `ack` event, or the incarnation's `reconcile.released`). Else the
  producer's in_flight undercounts and it publishes past the watermark.

Watermarks are `final["watermarks"]` (the run config), falling back to the
`high`/`low` field of the pause/resume event.

Operations read
---------------
* producer `publish` (published, consumed, in_flight_before), `pause`
  (published, consumed, in_flight, high), `resume` (..., low);
* consumer `consumed` (consumed), `reconcile` (consumed_before, released), `done`
  (consumed), `read` (pos, id), `skip` (pos, id, reason), `ack` (ids);
* final `watermarks`, `consumed`, `channel_ids`, `outcome`.

Anomalies
---------
1. `consumed_exceeds_published`: a producer event with consumed > published or
   consumed < 0, or a consumer value above the number of complete channel
   records or below 0.
2. `consumed_backwards`: a consumer sidecar value lower than an earlier one
   (consumed, reconcile.consumed_before, done; any process and incarnation),
   or a producer reading lower than an earlier producer reading (after a
   power cut: lower than the last consumer value reported before the cut).
3. `published_over_watermark`: a publish with
   `consumed + high + publish_batch < published`, or one made while
   `in_flight_before >= high`.
4. `pause_without_watermark`: a pause with `in_flight < high`.
5. `resume_above_low`: a resume with `in_flight > low`.
6. `end_consumed_mismatch`: a completed run whose final sidecar `consumed`
   differs from the number of channel records.
7. `pause_resume_out_of_order`: within one producer incarnation (which starts
   unpaused) pause and resume do not alternate: a resume with no pause before
   it, or a pause while paused already (the history hides a state change).
8. `consumed_before_ack`: a consumer `consumed` value covering a record that
   its incarnation read or skipped as a duplicate while the record's sample
   had no durable ack yet; names the record's position, sample and line.
"""

from __future__ import annotations

from typing import List

from . import Anomaly, add_durable_acks, context, finish, incarnation

PROP = "P3"
NAME = "exact_backpressure"


def _int(v):
    return None if v is None else int(v)


class _Scan:
    """The anomalies found so far, and how one is written."""

    def __init__(self) -> None:
        self.anomalies: List[Anomaly] = []

    def add(self, kind, msg, e, prev=None, ids=()):
        lines = ([prev["line"]] if prev else []) + [e.get("line", 0)]
        incs = list(dict.fromkeys(([incarnation(prev)] if prev else []) + [incarnation(e)]))
        self.anomalies.append(Anomaly(kind, msg, sample_ids=list(ids), steps=[], incarnations=incs, lines=lines))

    def highest(self, who, last, v, e, where):
        """The highest (consumed, event) so far, after `v` seen at `e`; a drop below it is consumed_backwards."""
        if last is not None and v < last[0]:
            p = last[1]
            self.add("consumed_backwards",
                     f"{who} went backwards: consumed={last[0]} ({p.get('ev')} by {incarnation(p)} at line "
                     f"{p.get('line')}) then consumed={v} ({where})", e, prev=p)
            return last
        return (v, e)


def check(history, final, ctx=None):
    ctx = context(history, final, ctx)
    final = ctx.final
    wm = final.get("watermarks") or {}
    high_cfg, low_cfg, batch = wm.get("high"), wm.get("low"), int(wm.get("publish_batch") or 0)
    channel_ids = final.get("channel_ids")
    n_records = len(channel_ids) if channel_ids is not None else None
    scan = _Scan()
    n_pub, n_pause, n_resume = _producer_readings(scan, ctx, high_cfg, low_cfg, batch)
    last, n_cons = _consumer_values(scan, ctx, n_records)
    _consumed_before_ack(scan, ctx)
    if final.get("outcome") == "completed" and n_records is not None:
        _end_of_run(scan, final, channel_ids, last)
    counts = {"publishes": n_pub, "pauses": n_pause, "resumes": n_resume, "consumer_values": n_cons,
              "channel_records": n_records, "high": high_cfg, "low": low_cfg, "publish_batch": batch}
    return finish(PROP, NAME, scan.anomalies, counts)


def _producer_readings(scan: _Scan, ctx, high_cfg, low_cfg, batch: int):
    """Anomalies 1 to 5 and 7 from the producer's publish, pause and resume events; their counts."""
    prod = ctx.events("producer", "publish", "pause", "resume")
    cuts = ctx.events("supervisor", "powercut")
    durable = [(e.get("line", 0), _int(e.get("consumed_before") if e.get("ev") == "reconcile" else e.get("consumed")))
               for e in ctx.events("consumer", "consumed", "reconcile", "done")]
    last_seen = None  # (value, event)
    n_pub = n_pause = n_resume = 0
    paused = {}  # producer incarnation -> paused, by its own pause/resume events
    for e in prod:
        ev = e.get("ev")
        if ev in ("pause", "resume"):
            inc = e.get("inc", 0)
            if paused.get(inc, False) == (ev == "pause"):
                scan.add("pause_resume_out_of_order",
                         f"{ev} by {incarnation(e)} at line {e.get('line')} while "
                         f"{'paused' if ev == 'pause' else 'not paused'} (pause and resume must alternate)", e)
            paused[inc] = ev == "pause"
        pub, con = _int(e.get("published")), _int(e.get("consumed"))
        where = f"{ev} by {incarnation(e)} at line {e.get('line')}"
        for c in cuts:  # a power cut may revert the sidecar to its durable value, no lower
            if last_seen is not None and last_seen[1].get("line", 0) < c.get("line", 0) < e.get("line", 0):
                floor = max((v for ln, v in durable if v is not None and ln < c.get("line", 0)), default=0)
                if floor < last_seen[0]:
                    last_seen = (floor, c)
        if con is not None and pub is not None and (con < 0 or con > pub):
            scan.add("consumed_exceeds_published",
                     f"{where} observed consumed={con} with published={pub}"
                     + (f" (ids {_ids(e.get('ids'))})" if e.get("ids") else ""), e, ids=e.get("ids") or ())
        if con is not None:
            last_seen = scan.highest("producer reading", last_seen, con, e, where)
        if ev == "publish":
            n_pub += 1
            _check_publish(scan, e, where, pub, con, high_cfg, batch)
        elif ev == "pause":
            n_pause += 1
            high = high_cfg if high_cfg is not None else e.get("high")
            inf = _in_flight(e, pub, con)
            if high is not None and inf is not None and inf < high:
                scan.add("pause_without_watermark",
                         f"{where} paused at in_flight={inf} (published {pub}, consumed {con}) below high {high}", e)
        else:
            n_resume += 1
            low = low_cfg if low_cfg is not None else e.get("low")
            inf = _in_flight(e, pub, con)
            if low is not None and inf is not None and inf > low:
                scan.add("resume_above_low",
                         f"{where} resumed at in_flight={inf} (published {pub}, consumed {con}) above low {low}", e)
    return n_pub, n_pause, n_resume


def _in_flight(e, pub, con):
    inf = _int(e.get("in_flight"))
    if inf is None and pub is not None and con is not None:
        inf = pub - con
    return inf


def _check_publish(scan: _Scan, e, where: str, pub, con, high, batch: int) -> None:
    ifb = _int(e.get("in_flight_before"))
    if ifb is None and pub is not None and con is not None:
        ifb = pub - len(e.get("ids") or ()) - con
    ids = e.get("ids") or ()
    if high is not None and pub is not None and con is not None and con + high + batch < pub:
        scan.add("published_over_watermark",
                 f"{where} brought published to {pub} with consumed={con}: in_flight {pub - con} > high {high} "
                 f"+ publish_batch {batch}; ids {_ids(ids)}", e, ids=ids)
    elif high is not None and ifb is not None and ifb >= high:
        scan.add("published_over_watermark",
                 f"{where} published ids {_ids(ids)} while in_flight_before={ifb} >= high {high}", e, ids=ids)


def _consumer_values(scan: _Scan, ctx, n_records):
    """Anomalies from the consumer's sidecar values; the highest value seen and how many there were."""
    last = None
    n_cons = 0
    for e in ctx.events("consumer", "consumed", "reconcile", "done"):
        ev = e.get("ev")
        v = _int(e.get("consumed_before") if ev == "reconcile" else e.get("consumed"))
        if v is None:
            continue
        n_cons += 1
        where = f"{ev} by {incarnation(e)} at line {e.get('line')}"
        if v < 0 or (n_records is not None and v > n_records):
            scan.add("consumed_exceeds_published",
                     f"{where}: consumed={v} but the channel has {n_records} complete records", e)
        last = scan.highest("consumer sidecar", last, v, e, where)
    return last, n_cons


def _consumed_before_ack(scan: _Scan, ctx) -> None:
    """Anomaly 8: a `consumed` value past a record of its incarnation whose sample was not acked yet."""
    acked = set()
    waiting = {}  # (proc, inc) -> {pos: read or duplicate-skip event} not yet covered by a consumed value
    for e in ctx.events("consumer", "reconcile", "ack", "read", "skip", "consumed"):
        ev, key = e.get("ev"), (e.get("proc"), e.get("inc", 0))
        if add_durable_acks(acked, e):
            continue
        if (ev == "read" or (ev == "skip" and e.get("reason") == "duplicate")) and e.get("pos") is not None:
            waiting.setdefault(key, {})[int(e["pos"])] = e
        elif ev == "consumed" and e.get("consumed") is not None:
            mine = waiting.get(key, {})
            for pos in sorted(p for p in mine if p < int(e["consumed"])):
                r = mine.pop(pos)
                if r.get("id") not in acked:
                    scan.add("consumed_before_ack",
                             f"consumed={e['consumed']} by {incarnation(e)} at line {e.get('line')} covers record "
                             f"{pos} (sample {r.get('id')}, {r.get('ev')} at line {r.get('line')}), not acked yet",
                             e, prev=r, ids=[r.get("id")])


def _end_of_run(scan: _Scan, final, channel_ids, last) -> None:
    """A completed run consumed exactly the channel's records."""
    n_records = len(channel_ids)
    fc = final.get("consumed")
    if fc is None or int(fc) != n_records:
        lines, incs = [], []
        if last is not None:
            lines, incs = [last[1].get("line", 0)], [incarnation(last[1])]
        unconsumed = channel_ids[int(fc):] if isinstance(fc, int) and 0 <= fc < n_records else []
        scan.anomalies.append(Anomaly(
            "end_consumed_mismatch",
            f"run completed with sidecar consumed={fc} but {n_records} channel records (in_flight "
            f"{n_records - int(fc) if fc is not None else '?'}); last consumer value "
            f"{last[0] if last else None} at line {lines[0] if lines else None} by "
            f"{incs[0] if incs else None}; unconsumed ids {_ids(unconsumed)}",
            sample_ids=list(unconsumed), incarnations=incs, lines=lines))


def _ids(ids, limit=8):
    ids = list(ids)
    s = ", ".join(ids[:limit])
    return s + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "") if ids else "-"
