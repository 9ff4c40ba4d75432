"""The first calls: is it a store, which records does it take, does it keep anything?

Run once before any tier, in a child process bounded by the call timeout
(`guard`), on a fresh working directory. Operations, in order; each outcome is
a key of the returned dict:

1. build one store (`construct_error`; a constructor that does not return is
   `hang`, a liveness finding about the backend);
2. check the methods (`not_a_store`, `adapter` for a store with only
   `commit_sample`, `declared` profile);
3. find the record types (`records.discover`: annotation, module namespace,
   `--records`, else the reference's) and build a plain and a full ref from
   them; failing to build one is the harness's fault (`build_error`), never the
   backend's;
4. commit both and read them back. An exception that shows the backend wants
   other records (a constructor's missing or unexpected argument, a missing
   key, or another `SampleRef` type in the frames that raised) is `rejects`: the
   harness's records, not a backend bug; the message names the module whose
   records the store uses, for `--records`. Any other exception is left for
   the tiers to report as the backend's;
5. `retains_nothing`: commit returned, ack returned, and no read shows
   anything of either (a NoOp store): one readable verdict, not a pile of
   counterexamples.
"""

from __future__ import annotations

import inspect
import random
import re
import sys
import traceback
from typing import Any, Dict, Optional

from . import guard
from .records import Records, discover

_REJECT_PATTERNS = re.compile(
    r"__init__\(\)|unexpected keyword|required positional|required keyword|missing \d+ required")


def _alt_records(tb, mine: type) -> Optional[str]:
    """The module of a SampleRef dataclass (other than `mine`) seen in the raising frames."""
    import dataclasses

    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for fr in reversed(frames):
        for nm in ("SampleRef", "FeatureSpec"):
            obj = fr.f_globals.get(nm)
            if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and obj is not mine:
                if nm == "FeatureSpec" or obj.__module__ != mine.__module__:
                    mod = sys.modules.get(obj.__module__)
                    if mod is not None and getattr(mod, "SampleRef", None) is not mine:
                        return obj.__module__
    return None


def _first_calls(target, workdir: str) -> Dict[str, Any]:
    from .store_calls import close_store, missing_methods

    out: Dict[str, Any] = {}
    try:
        store = target.open_raw(workdir)
    except (Exception, SystemExit) as e:  # noqa: BLE001
        out["construct_error"] = traceback.format_exception_only(type(e), e)[-1].strip()
        return out
    raw = store
    try:
        if store is None:
            out["not_a_store"] = "the factory returned None"
            return out
        st = type(store)
        store = guard.TimedStore(store)  # every first call runs under the call timeout
        out["store_type"] = (st.__module__, st.__qualname__)
        out["declared"] = getattr(store, "profile", None)
        missing = missing_methods(store)
        if missing:
            if missing == ["commit_sample"] and callable(getattr(store, "commit_samples", None)):
                out["not_a_store"] = (f"{st.__name__} has commit_samples but no commit_sample "
                                      "(the contract requires commit_sample)")
            else:
                out["not_a_store"] = (f"{st.__name__} is missing {', '.join(missing)} "
                                      "(see DESIGN section 2 for the MetadataStore contract)")
            return out
        batch = callable(getattr(store, "commit_samples", None))
        out["adapter"] = not batch
        recs: Records = target.records or discover(st, target.factory)
        out["records_cls"] = (recs.ref_cls.__module__, recs.ref_cls.__qualname__)
        out["records_source"] = recs.source
        try:
            refs = [recs.minimal_ref("certify-probe-0"), recs.random_ref(random.Random(0), "certify-probe-1")]
        except Exception as e:  # noqa: BLE001 - the harness could not build the records
            out["build_error"] = (f"the harness cannot build refs of {recs.names()} (found by {recs.source}): "
                                  f"{type(e).__name__}: {e}; "
                                  "pass --records MODULE naming the module of the store's SampleRef")
            return out
        step = "commit_sample"
        try:
            for r in refs:
                step = "commit_sample"
                fresh = store.commit_sample(r)
                step = "get_committed"
                store.get_committed(r.sample_id)
        except Exception as e:  # noqa: BLE001
            alt = _alt_records(e.__traceback__, recs.ref_cls)
            text = f"{type(e).__name__}: {e}"
            key = str(e.args[0]) if isinstance(e, KeyError) and e.args else ""
            if alt or (isinstance(e, TypeError) and _REJECT_PATTERNS.search(text)) or (
                    isinstance(e, KeyError) and not key.startswith("certify-probe")):
                where = f"records from {alt}" if alt else "other records"
                hint = f"pass --records {alt}" if alt else "pass --records MODULE naming the module of its SampleRef"
                out["rejects"] = (f"{step} on the first ref raised {text}: the store uses {where}, "
                                  f"not {recs.names()} (found by {recs.source}); {hint}")
            return out
        try:
            nothing = (
                bool(fresh)
                and not store.is_committed("certify-probe-1")
                and store.get_committed("certify-probe-1") is None
                and store.committed_count() == 0
                and not list(store.all_committed_ids())
            )
            if nothing:
                store.record_train_ack(["certify-probe-1"], global_step=1, optimizer_durable=True)
                m = store.durable_marker()
                if not set(m.get("acked") or ()) and m.get("global_step") is None:
                    out["retains_nothing"] = (
                        "commit_sample returned True, yet is_committed, get_committed, committed_count and "
                        "all_committed_ids show nothing of the ref, and durable_marker shows nothing of an "
                        "acknowledged step: the store keeps no committed ref and no ack"
                    )
        except Exception:  # noqa: BLE001 - the tiers will report it as the backend's
            pass
        return out
    finally:
        try:
            close_store(raw)
        except Exception:  # noqa: BLE001
            pass


def run(target, workdir: str) -> Dict[str, Any]:
    from .children import in_child

    r = in_child(_first_calls, target, workdir, workdir=workdir, timeout=guard.timeout_s() * 2 + 60, name="probe")
    if r["ok"]:
        return r["value"]
    if r.get("hang") or r.get("hung"):
        hang = r.get("hang") or {"call": "first calls", "args": "", "seconds": guard.timeout_s() * 2 + 60,
                                 "timeout_s": guard.timeout_s()}
        return {"hang": hang, "error": r["error"]}
    if r.get("died") and r["died"]["in_store"]:
        return {"construct_error": r["error"]}
    raise RuntimeError(f"probing the store failed inside the certifier: {r['error']}\n{r.get('traceback', '')}")


def records_in_parent(found: Dict[str, Any], factory: Any) -> Records:
    """The child's record choice, resolved again in this process."""
    from .records import _is_record

    mod_q = found.get("records_cls")
    if mod_q:
        obj: Any = sys.modules.get(mod_q[0])
        for part in mod_q[1].split("."):
            obj = getattr(obj, part, None)
        if _is_record(obj):
            return Records(obj, found.get("records_source", "the store's records"))
    st = None
    if found.get("store_type"):
        st_obj: Any = sys.modules.get(found["store_type"][0])
        for part in found["store_type"][1].split("."):
            st_obj = getattr(st_obj, part, None)
        st = st_obj
    return discover(st or (factory if inspect.isclass(factory) else None), factory)
