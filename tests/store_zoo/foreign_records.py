"""Records of a backend that is not SpecForge: `FeatureSpec` has an extra required
field (`layout`) and `SampleRef` an extra field (`shard`), so refs built from the
reference's records cannot be read back. `from_dict` turns stored JSON back into
these types (strictly: an unknown or missing field is a TypeError)."""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Literal, Optional, Tuple


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    shape: Tuple[int, ...]
    dtype: str
    layout: Literal["dense", "packed"]
    device_hint: Optional[str] = None
    target_meta: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SampleRef:
    sample_id: str
    run_id: str
    feature_specs: Dict[str, FeatureSpec]
    shard: int = 0
    metadata: Dict[str, Any] = field(default_factory=dict)


def to_dict(ref) -> dict:
    return dataclasses.asdict(ref)


def from_dict(raw: dict) -> SampleRef:
    specs = {k: FeatureSpec(**{**v, "shape": tuple(v["shape"])}) for k, v in raw["feature_specs"].items()}
    return SampleRef(**{**raw, "feature_specs": specs})
