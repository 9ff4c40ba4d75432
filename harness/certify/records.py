"""The record types a backend uses, and the values certification builds from them.

Model: a backend stores `SampleRef`-like dataclasses (with `FeatureSpec`-like
dataclasses nested inside) and turns what it stored back into its own types.
Certification therefore builds its refs from the backend's own record types,
found in this order (`discover`):

1. an explicit choice (`--records MODULE`, `MetadataStoreSuite.records`): the
   user's word wins over any guess;
2. the type annotation of `commit_sample`'s parameter (`typing.get_type_hints`,
   walking the store class's MRO, `commit_samples`' `Sequence[...]` too);
3. a `SampleRef` dataclass in the store's module namespace (or the factory's);
4. the reference's records (`reference_impl.contracts`).

Operations:
* `Records.strategy()`: a Hypothesis strategy of refs, derived from the
  dataclass fields and type hints (str, bytes, int, float, bool, None,
  Optional/Union, Literal, Enum, Dict/Mapping, List/Sequence/Set, Tuple,
  nested dataclasses, Any as JSON data); half of the refs vary only the id
  (every other required field minimal, defaulted fields left to the default).
* `Records.random_ref(rng, sid, **meta)`: the same from a `random.Random`.
* `Records.canon(obj)`: a ref as plain data, field by field after the record
  type's own fields, never by the returned object's type (a store may return
  its own type, or dicts for nested records).
* `Records.describe()`: the types used, for the certificate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import importlib
import inspect
import random
import sys
import types
import typing
from collections.abc import Mapping as _AbcMapping
from collections.abc import Set as _AbcSet
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from hypothesis import strategies as st

MISSING_FIELD = "<field missing>"
_UNI = "äöü-é-样本-データ-🙂-\u05d0"


class RecordsError(Exception):
    """The record types cannot be found or used (bad input: `--records` names no records)."""


class RecordBuildError(Exception):
    """The harness could not build a record of the type in use: the harness's fault, not the backend's."""


def _safe(cls: type):
    def build(**kw):
        try:
            return cls(**kw)
        except Exception as e:  # noqa: BLE001
            raise RecordBuildError(
                f"building {cls.__qualname__}({', '.join(kw)}) raised {type(e).__name__}: {e}") from e

    build.__name__ = cls.__name__
    return build


# -- discovery -----------------------------------------------------------------------


def _is_record(obj: Any) -> bool:
    return inspect.isclass(obj) and dataclasses.is_dataclass(obj) and any(
        f.name == "sample_id" for f in dataclasses.fields(obj)
    )


def _ref_from_hint(hint: Any) -> Optional[type]:
    """The ref dataclass named by an annotation: `SampleRef`, `Sequence[SampleRef]`, `Optional[...]`."""
    if _is_record(hint):
        return hint
    for a in typing.get_args(hint):
        found = _ref_from_hint(a)
        if found is not None:
            return found
    return None


def _from_annotation(store_type: Any) -> Optional[type]:
    if not inspect.isclass(store_type):
        return None
    for klass in store_type.__mro__:
        for meth in ("commit_sample", "commit_samples"):
            fn = vars(klass).get(meth)
            if fn is None or not callable(fn):
                continue
            try:
                hints = typing.get_type_hints(fn)
            except Exception:  # noqa: BLE001 - an unresolvable annotation is no answer
                continue
            params = [p for p in inspect.signature(fn).parameters if p != "self"]
            for p in params[:1]:
                found = _ref_from_hint(hints.get(p))
                if found is not None:
                    return found
    return None


def _from_module(mod_name: Optional[str]) -> Optional[type]:
    mod = sys.modules.get(mod_name or "")
    if mod is None:
        return None
    obj = getattr(mod, "SampleRef", None)
    return obj if _is_record(obj) else None


def module_records(mod_name: str) -> type:
    """The SampleRef dataclass of `--records MODULE`; RecordsError names what is wrong."""
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001
        raise RecordsError(f"--records {mod_name!r}: importing it failed: {type(e).__name__}: {e}") from e
    obj = getattr(mod, "SampleRef", None)
    if obj is None:
        raise RecordsError(f"--records {mod_name!r}: the module has no SampleRef")
    if not _is_record(obj):
        raise RecordsError(f"--records {mod_name!r}: its SampleRef is not a dataclass with a sample_id field")
    return obj


def discover(store_type: Any = None, factory: Any = None, explicit: Optional[str] = None) -> "Records":
    if explicit:
        return Records(module_records(explicit), f"--records {explicit}")
    found = _from_annotation(store_type) or _from_annotation(factory)
    if found is not None:
        return Records(found, "the type annotation of the store's commit_sample")
    for owner in (store_type, factory):
        found = _from_module(getattr(owner, "__module__", None))
        if found is not None:
            return Records(found, f"SampleRef in the store's module {owner.__module__}")
    from reference_impl.contracts import SampleRef

    return Records(SampleRef, "the reference's records (the store names no record type)")


# -- type hints ----------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> typing.Mapping[str, Any]:
    """The resolved field types of a record class, read-only.

    Cached: resolving string annotations compiles each of them, and tiers 2 and 3
    build refs in their tight loops (uncached, a ref cost about 1 ms, and tier 2's
    ackers spent nearly all their time building refs instead of acking).
    """
    try:
        out = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable names are treated as Any
        out = {}
        for f in dataclasses.fields(cls):
            out[f.name] = f.type if not isinstance(f.type, str) else Any
    return types.MappingProxyType(out)


def _init_fields(cls: type) -> List[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING  # type: ignore[misc]


def _origin(tp: Any) -> Any:
    return typing.get_origin(tp)


_BARE = {dict: Dict[str, Any], list: List[Any], tuple: Tuple[Any, ...], set: typing.Set[str],
         frozenset: typing.FrozenSet[str]}


def _norm(tp: Any) -> Any:
    """A bare container annotation (`dict`, `list`, ...) as its generic form."""
    try:
        return _BARE.get(tp, tp)
    except TypeError:  # unhashable annotation
        return tp


def _is_union(tp: Any) -> bool:
    o = _origin(tp)
    if o is typing.Union:
        return True
    try:
        import types

        return o is types.UnionType  # X | Y
    except AttributeError:
        return False


def _is_mapping(o: Any) -> bool:
    return o in (dict, typing.Dict) or (inspect.isclass(o) and issubclass(o, _AbcMapping))


def _is_seq(o: Any) -> bool:
    import collections.abc as abc

    return o in (list, set, frozenset) or (
        inspect.isclass(o) and o is not tuple and issubclass(o, (abc.Sequence, abc.Set)) and o is not str)


# -- Hypothesis strategies ---------------------------------------------------------

_text = st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53),
                       st.floats(allow_nan=False, allow_infinity=False), _text)
JSON = st.recursive(_json_leaf, lambda ch: st.lists(ch, max_size=2) | st.dictionaries(_text, ch, max_size=2),
                    max_leaves=4)


def strategy_for(tp: Any, depth: int = 0) -> st.SearchStrategy:
    """Values of type `tp` (plain data a JSON- or SQL-backed store can keep)."""
    tp = _norm(tp)
    if tp is Any or tp is object or isinstance(tp, (str, typing.ForwardRef)) or depth > 4:
        return JSON
    if tp is type(None) or tp is None:
        return st.none()
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(0, 2**40)
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if tp is str:
        return _text
    if tp is bytes:
        return st.binary(max_size=8)
    if inspect.isclass(tp) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if inspect.isclass(tp) and dataclasses.is_dataclass(tp):
        return _builds(tp, depth, rich=True)
    o, args = _origin(tp), typing.get_args(tp)
    if o is typing.Literal:
        return st.sampled_from(list(args))
    if _is_union(tp):
        return st.one_of(*[strategy_for(a, depth + 1) for a in args])
    if o is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy_for(args[0], depth + 1), max_size=3).map(tuple)
        if args == ((),) or not args:
            return st.just(())
        return st.tuples(*[strategy_for(a, depth + 1) for a in args])
    if _is_mapping(o):
        k = args[0] if args else str
        v = args[1] if len(args) > 1 else Any
        return st.dictionaries(strategy_for(k, depth + 1), strategy_for(v, depth + 1), max_size=2)
    if _is_seq(o):
        e = args[0] if args else Any
        if o in (set, frozenset) or (inspect.isclass(o) and issubclass(o, _AbcSet)):
            return st.frozensets(strategy_for(e, depth + 1), max_size=3).map(o if o in (set, frozenset) else set)
        return st.lists(strategy_for(e, depth + 1), max_size=3)
    return JSON


def _builds(cls: type, depth: int, rich: bool, overrides: Optional[Dict[str, st.SearchStrategy]] = None):
    hints = _hints(cls)
    kw = {}
    for f in _init_fields(cls):
        if overrides and f.name in overrides:
            kw[f.name] = overrides[f.name]
        elif rich or not _has_default(f):
            hint = hints.get(f.name, Any)
            kw[f.name] = strategy_for(hint, depth + 1) if rich else st.just(minimal_value(hint))
    return st.builds(_safe(cls), **kw)


def minimal_value(tp: Any, depth: int = 0) -> Any:
    """The simplest value of a type: "", 0, False, None, empty containers, a Literal's first value."""
    tp = _norm(tp)
    if tp is Any or isinstance(tp, (str, typing.ForwardRef)) or tp is None or tp is type(None) or depth > 4:
        return None
    if tp is bool:
        return False
    if tp in (int, float):
        return tp(0)
    if tp is str:
        return ""
    if tp is bytes:
        return b""
    if inspect.isclass(tp) and issubclass(tp, enum.Enum):
        return next(iter(tp))
    if inspect.isclass(tp) and dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        return tp(**{f.name: minimal_value(hints.get(f.name, Any), depth + 1)
                     for f in _init_fields(tp) if not _has_default(f)})
    o, args = _origin(tp), typing.get_args(tp)
    if o is typing.Literal:
        return args[0]
    if _is_union(tp):
        return None if type(None) in args else minimal_value(args[0], depth + 1)
    if o is tuple:
        if not args or (len(args) == 2 and args[1] is Ellipsis) or args == ((),):
            return ()
        return tuple(minimal_value(a, depth + 1) for a in args)
    if _is_mapping(o):
        return {}
    if o in (set, frozenset):
        return o()
    if _is_seq(o):
        return []
    return None


# -- random.Random values (tiers 2 and 3) -------------------------------------------------


def random_value(tp: Any, rng: random.Random, depth: int = 0) -> Any:
    tp = _norm(tp)
    if tp is Any or tp is object or isinstance(tp, (str, typing.ForwardRef)) or depth > 4:
        return {"n": rng.randint(0, 10**9), "u": _UNI, "deep": {"a": [1, {"b": "c"}], "xs": [1, 2.5, None, True]}}
    if tp is type(None) or tp is None:
        return None
    if tp is bool:
        return rng.random() < 0.5
    if tp is int:
        return rng.randint(0, 1 << 40)
    if tp is float:
        return rng.choice([0.0, 1.5, -2.25, 1e-7, 12345.678])
    if tp is str:
        return rng.choice(["", "x", _UNI, f"v-{rng.randint(0, 999)}", "a'b\"c;--", "line\nbreak"])
    if tp is bytes:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 6)))
    if inspect.isclass(tp) and issubclass(tp, enum.Enum):
        return rng.choice(list(tp))
    if inspect.isclass(tp) and dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        return tp(**{f.name: random_value(hints.get(f.name, Any), rng, depth + 1) for f in _init_fields(tp)})
    o, args = _origin(tp), typing.get_args(tp)
    if o is typing.Literal:
        return rng.choice(list(args))
    if _is_union(tp):
        return random_value(rng.choice(list(args)), rng, depth + 1)
    if o is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(random_value(args[0], rng, depth + 1) for _ in range(rng.randint(0, 3)))
        return tuple(random_value(a, rng, depth + 1) for a in args if a != ())
    if _is_mapping(o):
        k = args[0] if args else str
        v = args[1] if len(args) > 1 else Any
        out = {}
        for i in range(rng.randint(0, 3)):
            key = f"k{i}{_UNI[i]}" if k is str else random_value(k, rng, depth + 1)
            out[key] = random_value(v, rng, depth + 1)
        return out
    if o in (set, frozenset):
        return o(random_value(args[0] if args else str, rng, depth + 1) for _ in range(rng.randint(0, 3)))
    if _is_seq(o):
        return [random_value(args[0] if args else Any, rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return None


# -- plain data, field by field ----------------------------------------------------------


def plain(v: Any, tp: Any = Any) -> Any:
    """`v` as plain data, guided by its declared type: a nested record becomes a dict of that
    record type's fields, whatever type (or dict) the store returned it as."""
    if inspect.isclass(tp) and dataclasses.is_dataclass(tp):
        if v is None:
            return None
        hints = _hints(tp)
        out = {}
        for f in dataclasses.fields(tp):
            if isinstance(v, _AbcMapping):
                x = v.get(f.name, MISSING_FIELD)
            else:
                x = getattr(v, f.name, MISSING_FIELD)
            out[f.name] = x if x is MISSING_FIELD else plain(x, hints.get(f.name, Any))
        return out
    o, args = _origin(tp), typing.get_args(tp)
    if _is_union(tp):
        if v is None:
            return None
        for a in args:
            if inspect.isclass(a) and dataclasses.is_dataclass(a):
                return plain(v, a)
        return plain(v, next((a for a in args if a is not type(None)), Any))
    if _is_mapping(o) and isinstance(v, _AbcMapping):
        vt = args[1] if len(args) > 1 else Any
        return {str(k): plain(x, vt) for k, x in v.items()}
    if (o is tuple or _is_seq(o)) and isinstance(v, (list, tuple, set, frozenset)):
        et = args[0] if args else Any
        items = sorted(v, key=repr) if isinstance(v, (set, frozenset)) else v
        return [plain(x, et) for x in items]
    if isinstance(v, enum.Enum):
        return v.value
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: plain(getattr(v, f.name), Any) for f in dataclasses.fields(v)}
    if isinstance(v, _AbcMapping):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


# -- the records of one certification -------------------------------------------------------


def _qual(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def nested_records(cls: type) -> List[type]:
    """Every dataclass reachable from `cls`'s type hints (FeatureSpec inside SampleRef)."""
    seen: List[type] = []

    def walk(tp: Any) -> None:
        if inspect.isclass(tp) and dataclasses.is_dataclass(tp):
            if tp in seen:
                return
            seen.append(tp)
            for h in _hints(tp).values():
                walk(h)
            return
        for a in typing.get_args(tp):
            walk(a)

    walk(cls)
    return seen[1:]


@dataclass
class Records:
    ref_cls: type
    source: str
    notes: List[str] = field(default_factory=list)

    @property
    def fields(self) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.ref_cls))

    def describe(self) -> Dict[str, Any]:
        return {
            "SampleRef": _qual(self.ref_cls),
            "nested": [_qual(c) for c in nested_records(self.ref_cls)],
            "found_by": self.source,
            "fields": list(self.fields),
        }

    def names(self) -> str:
        return ", ".join([_qual(self.ref_cls)] + [_qual(c) for c in nested_records(self.ref_cls)])

    # values
    def strategy(self, ids: st.SearchStrategy) -> st.SearchStrategy:
        plain_refs = _builds(self.ref_cls, 0, rich=False, overrides={"sample_id": ids})
        rich_refs = _builds(self.ref_cls, 0, rich=True, overrides={"sample_id": ids})
        return plain_refs | rich_refs

    def minimal_ref(self, sid: str) -> Any:
        hints = _hints(self.ref_cls)
        kw = {f.name: minimal_value(hints.get(f.name, Any)) for f in _init_fields(self.ref_cls) if not _has_default(f)}
        kw["sample_id"] = sid
        return self.ref_cls(**kw)

    def random_ref(self, rng: random.Random, sid: str, **meta: Any) -> Any:
        hints = _hints(self.ref_cls)
        kw = {f.name: random_value(hints.get(f.name, Any), rng) for f in _init_fields(self.ref_cls)}
        kw["sample_id"] = sid
        if meta and isinstance(kw.get("metadata"), dict):
            kw["metadata"] = {**kw["metadata"], **meta}
        return self.ref_cls(**kw)

    def minimal_fields(self) -> Dict[str, Any]:
        """Field -> the value a plain ref has (to print only what differs)."""
        hints = _hints(self.ref_cls)
        out = {}
        for f in dataclasses.fields(self.ref_cls):
            if f.name == "sample_id":
                continue
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                out[f.name] = f.default_factory()  # type: ignore[misc]
            else:
                out[f.name] = minimal_value(hints.get(f.name, Any))
        return out

    def canon(self, ref: Any) -> Dict[str, Any]:
        return plain(ref, self.ref_cls)

    def missing_fields(self, ref: Any) -> List[str]:
        if isinstance(ref, _AbcMapping):
            return [f for f in self.fields if f not in ref]
        return [f for f in self.fields if not hasattr(ref, f)]


_ACTIVE: Optional[Records] = None


def use(records: Records) -> None:
    """Make `records` the ones the tiers build and compare with (children are handed it)."""
    global _ACTIVE
    _ACTIVE = records


@contextlib.contextmanager
def using(records: Records):
    """`use(records)` for the duration of one certification, then the previous ones again."""
    global _ACTIVE
    prev = _ACTIVE
    _ACTIVE = records
    try:
        yield records
    finally:
        _ACTIVE = prev


def active() -> Records:
    global _ACTIVE
    if _ACTIVE is None:
        from reference_impl.contracts import SampleRef

        _ACTIVE = Records(SampleRef, "the reference's records")
    return _ACTIVE
