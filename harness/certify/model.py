"""A pure model of the MetadataStore contract (DESIGN section 2).

No I/O, no store: the state a correct store must show after a sequence of
calls. Tier 1 runs a store and this model side by side; tiers 2 and 3 use the
comparison helpers (`canon_ref`, `diff_refs`, `normalise_marker`).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .records import active


class Violation(AssertionError):
    """A store broke the contract; `prop` names the property."""

    def __init__(self, prop: str, message: str) -> None:
        super().__init__(f"[{prop}] {message}")
        self.prop = prop
        self.message = message


# -- comparing refs field by field, types included -----------------------------


def _tag(x: Any) -> Any:
    """A type-strict comparable form of plain data (bool is not int, 1 is not "1")."""
    if x is None:
        return ("none",)
    if isinstance(x, bool):
        return ("bool", x)
    if isinstance(x, int):
        return ("int", int(x))
    if isinstance(x, float):
        return ("nan",) if math.isnan(x) else ("float", x)
    if isinstance(x, str):
        return ("str", x)
    if isinstance(x, bytes):
        return ("bytes", x)
    if isinstance(x, dict):
        return ("dict", tuple(sorted((str(k), _tag(v)) for k, v in x.items())))
    if isinstance(x, (list, tuple)):
        return ("list", tuple(_tag(v) for v in x))
    return ("other", type(x).__name__, repr(x))


def canon_ref(ref: Any) -> Dict[str, Any]:
    """A ref (any type with the record type's fields) as plain data, field by field after the
    record type in use (`records.active()`); Violation if it is not one."""
    recs = active()
    missing = recs.missing_fields(ref)
    if missing:
        raise Violation(
            "round-trip",
            f"get_committed returned a {type(ref).__name__} without the {recs.ref_cls.__name__} field(s) "
            f"{', '.join(missing)}",
        )
    try:
        return recs.canon(ref)
    except Exception as e:  # noqa: BLE001
        raise Violation(
            "round-trip", f"get_committed returned a ref that cannot be read field by field: {e!r}"
        ) from e


def _first_diff(path: str, a: Any, b: Any) -> Optional[str]:
    if _tag(a) == _tag(b):
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(map(str, a)) | set(map(str, b))):
            if k not in a:
                return f"{path}[{k!r}]: not committed, returned {b[k]!r}"
            if k not in b:
                return f"{path}[{k!r}]: committed {a[k]!r}, missing on return"
            d = _first_diff(f"{path}[{k!r}]", a[k], b[k])
            if d:
                return d
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_diff(f"{path}[{i}]", x, y)
            if d:
                return d
    return f"{path}: committed {a!r} ({type(a).__name__}), returned {b!r} ({type(b).__name__})"


def diff_refs(expected: Dict[str, Any], got: Dict[str, Any]) -> Optional[str]:
    """None if equal field by field (types included), else the first difference."""
    for name in dict.fromkeys(list(expected) + list(got)):
        d = _first_diff(name, expected.get(name), got.get(name))
        if d:
            return d
    return None


def normalise_marker(m: Any) -> Dict[str, Any]:
    """The marker as {"acked": set[str], "global_step", "optimizer_durable"}; Violation if malformed."""
    if not isinstance(m, dict):
        try:
            m = dict(m)
        except Exception:  # noqa: BLE001
            raise Violation("marker", f"durable_marker returned {type(m).__name__}, not a dict")
    missing = [k for k in ("acked", "global_step", "optimizer_durable") if k not in m]
    if missing:
        raise Violation("marker", f"durable_marker() lacks key(s) {', '.join(missing)}: {m!r}")
    acked = m["acked"]
    if isinstance(acked, (str, bytes)) or not hasattr(acked, "__iter__"):
        raise Violation("marker", f"durable_marker()['acked'] is {type(acked).__name__}, not a set of ids")
    acked = set(acked)
    if set(map(type, acked)) - {str}:  # C-speed type check; readers call this in tight loops
        acked = {str(i) for i in acked}
    step = m["global_step"]
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        try:
            if isinstance(step, float) and step.is_integer():
                step = int(step)
            else:
                raise TypeError
        except TypeError:
            raise Violation("marker", f"durable_marker()['global_step'] is {step!r}, not an int or None")
    return {"acked": acked, "global_step": step, "optimizer_durable": bool(m["optimizer_durable"])}


def short(ids: Iterable[str], n: int = 6) -> str:
    ids = sorted(ids)
    body = ", ".join(repr(i if len(i) <= 40 else i[:37] + "...") for i in ids[:n])
    more = f", ... ({len(ids)} in all)" if len(ids) > n else ""
    return "{" + body + more + "}"


# -- the model -----------------------------------------------------------------


class ContractModel:
    """What a correct store holds after the same calls."""

    def __init__(self) -> None:
        self.refs: Dict[str, Dict[str, Any]] = {}
        self.order: List[str] = []
        self.acked: set = set()
        self.global_step: Optional[int] = None
        self.optimizer_durable: bool = False

    def copy(self) -> "ContractModel":
        return copy.deepcopy(self)

    def commit(self, refs: Sequence[Any]) -> List[bool]:
        """Apply a batch; one flag per ref; a repeated id in the batch is fresh once."""
        out = []
        for r in refs:
            sid = r.sample_id
            fresh = sid not in self.refs
            if fresh:
                self.refs[sid] = active().canon(r)
                self.order.append(sid)
            out.append(fresh)
        return out

    def ack(self, ids: Iterable[str], global_step: Optional[int], optimizer_durable: bool) -> None:
        self.acked |= {str(i) for i in ids}
        if global_step is not None:
            self.global_step = int(global_step)
        self.optimizer_durable = bool(optimizer_durable)

    def marker(self) -> Dict[str, Any]:
        return {
            "acked": set(self.acked),
            "global_step": self.global_step,
            "optimizer_durable": self.optimizer_durable,
        }


def marker_diff(expected: Dict[str, Any], got: Dict[str, Any]) -> Optional[Tuple[str, str]]:
    """(property, description) of the first difference between two normalised markers."""
    if got["acked"] != expected["acked"]:
        lost = expected["acked"] - got["acked"]
        extra = got["acked"] - expected["acked"]
        parts = []
        if lost:
            parts.append(f"missing acked ids {short(lost)}")
        if extra:
            parts.append(f"unexpected acked ids {short(extra)}")
        return "marker", "durable_marker()['acked'] " + "; ".join(parts)
    if got["global_step"] != expected["global_step"]:
        return (
            "global_step",
            f"durable_marker()['global_step'] is {got['global_step']!r}, expected {expected['global_step']!r}",
        )
    if got["optimizer_durable"] != expected["optimizer_durable"]:
        return (
            "optimizer_durable",
            f"durable_marker()['optimizer_durable'] is {got['optimizer_durable']!r}, "
            f"expected {expected['optimizer_durable']!r}",
        )
    return None
