"""Control-plane records: `SampleRef` and `FeatureSpec`.

Field names follow SpecForge's runtime contracts so that a MetadataStore written
for SpecForge round-trips these records unchanged. A ref points at one sample's
feature tensors (through `feature_store_uri` and `feature_keys`) and never holds
a tensor itself: `assert_no_tensors` rejects one anywhere inside, naming the path.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

_SCALARS = (str, bytes, bool, int, float, type(None))


@dataclass(frozen=True)
class FeatureSpec:
    """Shape and dtype of one named feature tensor (a description, not the data).

    `name` is the feature's name (input_ids, hidden_states, target, ...);
    `required` says whether a sample is incomplete without it. Field order and
    defaults are SpecForge's.
    """

    name: str
    shape: Tuple[int, ...]
    dtype: str
    device_hint: Optional[str] = None
    required: bool = True
    target_repr: Optional[str] = None
    target_meta: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "device_hint": self.device_hint,
            "required": self.required,
            "target_repr": self.target_repr,
            "target_meta": dict(self.target_meta),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureSpec":
        return cls(
            name=str(d["name"]),
            shape=tuple(int(x) for x in d["shape"]),
            dtype=str(d["dtype"]),
            device_hint=d.get("device_hint"),
            required=bool(d.get("required", True)),
            target_repr=d.get("target_repr"),
            target_meta=dict(d.get("target_meta") or {}),
        )


@dataclass(frozen=True)
class SampleRef:
    """A tensor-free pointer to exactly one sample's features."""

    sample_id: str
    run_id: str
    source_task_id: Optional[str]
    feature_store_uri: str
    feature_keys: Dict[str, str]
    feature_specs: Dict[str, FeatureSpec]
    strategy: str
    schema_version: int = 1
    target_model_version: Optional[str] = None
    draft_weight_version: Optional[str] = None
    tokenizer_version: Optional[str] = None
    num_tokens: int = 0
    estimated_bytes: int = 0
    metadata: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return ref_to_dict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SampleRef":
        return cls(
            sample_id=str(d["sample_id"]),
            run_id=str(d["run_id"]),
            source_task_id=d.get("source_task_id"),
            feature_store_uri=str(d["feature_store_uri"]),
            feature_keys=dict(d.get("feature_keys") or {}),
            feature_specs={
                k: v if isinstance(v, FeatureSpec) else FeatureSpec.from_dict(v)
                for k, v in (d.get("feature_specs") or {}).items()
            },
            strategy=str(d["strategy"]),
            schema_version=int(d.get("schema_version", 1)),
            target_model_version=d.get("target_model_version"),
            draft_weight_version=d.get("draft_weight_version"),
            tokenizer_version=d.get("tokenizer_version"),
            num_tokens=int(d.get("num_tokens", 0)),
            estimated_bytes=int(d.get("estimated_bytes", 0)),
            metadata=dict(d.get("metadata") or {}),
        )

    @classmethod
    def from_json(cls, text: str) -> "SampleRef":
        return cls.from_dict(json.loads(text))


REF_FIELDS = tuple(f.name for f in dataclasses.fields(SampleRef))
SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(FeatureSpec))


def spec_to_dict(spec: Any) -> Dict[str, Any]:
    """A FeatureSpec-like object (any type with the spec fields) as plain data."""
    if isinstance(spec, Mapping):
        return FeatureSpec.from_dict(spec).to_dict()
    return {
        "name": str(getattr(spec, "name")),
        "shape": [int(x) for x in getattr(spec, "shape")],
        "dtype": str(getattr(spec, "dtype")),
        "device_hint": getattr(spec, "device_hint", None),
        "required": bool(getattr(spec, "required", True)),
        "target_repr": getattr(spec, "target_repr", None),
        "target_meta": dict(getattr(spec, "target_meta", None) or {}),
    }


def ref_to_dict(ref: Any) -> Dict[str, Any]:
    """Any SampleRef-like object as plain JSON data, field by field.

    Stores may return their own ref type; comparing `ref_to_dict(a) ==
    ref_to_dict(b)` compares by field, never by type.
    """
    out = {name: getattr(ref, name) for name in REF_FIELDS}
    out["feature_keys"] = dict(out["feature_keys"] or {})
    out["feature_specs"] = {k: spec_to_dict(v) for k, v in (out["feature_specs"] or {}).items()}
    out["metadata"] = _plain(out["metadata"] or {})
    return out


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _looks_like_tensor(obj: Any) -> bool:
    root = type(obj).__module__.split(".", 1)[0]
    if root in ("torch", "numpy") and not isinstance(obj, _SCALARS):
        # torch.dtype / torch.Size are metadata, not data.
        name = type(obj).__name__
        return name not in ("dtype", "Size", "device")
    return all(hasattr(obj, a) for a in ("dtype", "shape", "device"))


#: Exact types that hold no tensor, checked before the general walk (the common case).
_PLAIN = frozenset(_SCALARS)
_FIELD_NAMES: Dict[type, Optional[Tuple[str, ...]]] = {}


def _dataclass_fields(t: type) -> Optional[Tuple[str, ...]]:
    """The field names of dataclass type `t` (None: not a dataclass), computed once per type."""
    try:
        return _FIELD_NAMES[t]
    except KeyError:
        names = tuple(f.name for f in dataclasses.fields(t)) if dataclasses.is_dataclass(t) else None
        _FIELD_NAMES[t] = names
        return names


def assert_no_tensors(obj: Any, path: str = "ref") -> None:
    """Raise TypeError naming the path of the first tensor found inside `obj`."""
    t = type(obj)
    if t in _PLAIN:
        return
    if t is dict or t is list or t is tuple:
        # Plain containers: only their non-plain members need the general walk.
        items = obj.items() if t is dict else enumerate(obj)
        for k, v in items:
            if type(v) not in _PLAIN:
                assert_no_tensors(v, f"{path}[{k!r}]" if t is dict else f"{path}[{k}]")
        return
    if isinstance(obj, _SCALARS):
        return
    if _looks_like_tensor(obj):
        raise TypeError(
            f"control-plane records carry no tensors: found {type(obj).__module__}."
            f"{type(obj).__name__} at {path}"
        )
    names = _dataclass_fields(t)
    if names is not None:
        for name in names:
            v = getattr(obj, name)
            if not isinstance(v, _SCALARS):
                assert_no_tensors(v, f"{path}.{name}")
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(v, _SCALARS):
                assert_no_tensors(v, f"{path}[{k!r}]")
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, v in enumerate(obj):
            if not isinstance(v, _SCALARS):
                assert_no_tensors(v, f"{path}[{i}]")
