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
* a completed run ends with `consumed == len(channel records)` (in_flight 0).

Watermarks are `final["watermarks"]` (the run config), falling back to the
`high`/`low` field of the pause/resume event.

Operations read
---------------
* producer `publish` (published, consumed, in_flight_before), `pause`
  (published, consumed, in_flight, high), `resume` (..., low);
* consumer `consumed` (consumed), `reconcile` (consumed_before), `done`
  (consumed);
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
"""

from __future__ import annotations

from . import Anomaly, context, finish, incarnation

PROP = "P3"
NAME = "exact_backpressure"


def _int(v):
    return None if v is None else int(v)


def check(history, final, ctx=None):
    ctx = context(history, final, ctx)
    final = ctx.final
    wm = final.get("watermarks") or {}
    high_cfg, low_cfg, batch = wm.get("high"), wm.get("low"), int(wm.get("publish_batch") or 0)
    channel_ids = final.get("channel_ids")
    n_records = len(channel_ids) if channel_ids is not None else None
    anomalies = []

    def add(kind, msg, e, prev=None, ids=()):
        lines = ([prev["line"]] if prev else []) + [e.get("line", 0)]
        incs = list(dict.fromkeys(([incarnation(prev)] if prev else []) + [incarnation(e)]))
        anomalies.append(Anomaly(kind, msg, sample_ids=list(ids), steps=[], incarnations=incs, lines=lines))

    def highest(who, last, v, e, where):
        """The highest (consumed, event) so far, after `v` seen at `e`; a drop below it is consumed_backwards."""
        if last is not None and v < last[0]:
            p = last[1]
            add("consumed_backwards",
                f"{who} went backwards: consumed={last[0]} ({p.get('ev')} by {incarnation(p)} at line "
                f"{p.get('line')}) then consumed={v} ({where})", e, prev=p)
            return last
        return (v, e)

    # -- producer observations ----------------------------------------------
    prod = ctx.events("producer", "publish", "pause", "resume")
    cuts = ctx.events("supervisor", "powercut")
    durable = [(e.get("line", 0), _int(e.get("consumed_before") if e.get("ev") == "reconcile" else e.get("consumed")))
               for e in ctx.events("consumer", "consumed", "reconcile", "done")]
    last_seen = None  # (value, event)
    n_pub = n_pause = n_resume = 0
    for e in prod:
        ev = e.get("ev")
        pub, con = _int(e.get("published")), _int(e.get("consumed"))
        where = f"{ev} by {incarnation(e)} at line {e.get('line')}"
        for c in cuts:  # a power cut may revert the sidecar to its durable value, no lower
            if last_seen is not None and last_seen[1].get("line", 0) < c.get("line", 0) < e.get("line", 0):
                floor = max((v for ln, v in durable if v is not None and ln < c.get("line", 0)), default=0)
                if floor < last_seen[0]:
                    last_seen = (floor, c)
        if con is not None and pub is not None and (con < 0 or con > pub):
            add("consumed_exceeds_published",
                f"{where} observed consumed={con} with published={pub}"
                + (f" (ids {_ids(e.get('ids'))})" if e.get("ids") else ""), e, ids=e.get("ids") or ())
        if con is not None:
            last_seen = highest("producer reading", last_seen, con, e, where)
        if ev == "publish":
            n_pub += 1
            high = high_cfg
            ifb = _int(e.get("in_flight_before"))
            if ifb is None and pub is not None and con is not None:
                ifb = pub - len(e.get("ids") or ()) - con
            ids = e.get("ids") or ()
            if high is not None and pub is not None and con is not None and con + high + batch < pub:
                add("published_over_watermark",
                    f"{where} brought published to {pub} with consumed={con}: in_flight {pub - con} > high {high} "
                    f"+ publish_batch {batch}; ids {_ids(ids)}", e, ids=ids)
            elif high is not None and ifb is not None and ifb >= high:
                add("published_over_watermark",
                    f"{where} published ids {_ids(ids)} while in_flight_before={ifb} >= high {high}", e, ids=ids)
        elif ev == "pause":
            n_pause += 1
            high = high_cfg if high_cfg is not None else e.get("high")
            inf = _int(e.get("in_flight"))
            if inf is None and pub is not None and con is not None:
                inf = pub - con
            if high is not None and inf is not None and inf < high:
                add("pause_without_watermark",
                    f"{where} paused at in_flight={inf} (published {pub}, consumed {con}) below high {high}", e)
        else:
            n_resume += 1
            low = low_cfg if low_cfg is not None else e.get("low")
            inf = _int(e.get("in_flight"))
            if inf is None and pub is not None and con is not None:
                inf = pub - con
            if low is not None and inf is not None and inf > low:
                add("resume_above_low",
                    f"{where} resumed at in_flight={inf} (published {pub}, consumed {con}) above low {low}", e)

    # -- consumer sidecar values ---------------------------------------------
    cons = ctx.events("consumer", "consumed", "reconcile", "done")
    last = None
    n_cons = 0
    for e in cons:
        ev = e.get("ev")
        v = _int(e.get("consumed_before") if ev == "reconcile" else e.get("consumed"))
        if v is None:
            continue
        n_cons += 1
        where = f"{ev} by {incarnation(e)} at line {e.get('line')}"
        if v < 0 or (n_records is not None and v > n_records):
            add("consumed_exceeds_published",
                f"{where}: consumed={v} but the channel has {n_records} complete records", e)
        last = highest("consumer sidecar", last, v, e, where)

    # -- end of run ----------------------------------------------------------
    if final.get("outcome") == "completed" and n_records is not None:
        fc = final.get("consumed")
        if fc is None or int(fc) != n_records:
            lines, incs = [], []
            if last is not None:
                lines, incs = [last[1].get("line", 0)], [incarnation(last[1])]
            unconsumed = channel_ids[int(fc):] if isinstance(fc, int) and 0 <= fc < n_records else []
            anomalies.append(Anomaly(
                "end_consumed_mismatch",
                f"run completed with sidecar consumed={fc} but {n_records} channel records (in_flight "
                f"{n_records - int(fc) if fc is not None else '?'}); last consumer value "
                f"{last[0] if last else None} at line {lines[0] if lines else None} by "
                f"{incs[0] if incs else None}; unconsumed ids {_ids(unconsumed)}",
                sample_ids=list(unconsumed), incarnations=incs, lines=lines))
    counts = {"publishes": n_pub, "pauses": n_pause, "resumes": n_resume, "consumer_values": n_cons,
              "channel_records": n_records, "high": high_cfg, "low": low_cfg, "publish_batch": batch}
    return finish(PROP, NAME, anomalies, counts)


def _ids(ids, limit=8):
    ids = list(ids)
    s = ", ".join(ids[:limit])
    return s + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "") if ids else "-"
