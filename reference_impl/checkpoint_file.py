"""The consumer's checkpoint file format: JSON for the plain values, raw bytes for the tensors.

Layout: the magic `DFHCKPT1`, a 4-byte little-endian length, a JSON document
(the state with each tensor replaced by {"tensor": NAME}), then the tensors as
one feature-store blob (`feature_store.encode_blob`: a header of name, dtype,
shape, size, then the bytes). A state is a dict of str keys whose values are
None, bool, int, float, str, lists and dicts of those, and tensors.

Not torch.save/torch.load: their zip container and unpickler cost about 0.5 ms
a save and 0.8 ms a load, which the simulation pays on nearly every consumer
step and restart. Decoding never unpickles: a file that is not this format
raises ValueError (the role of torch.load's weights_only).
"""

from __future__ import annotations

import json
import struct
from typing import Any, Dict

import torch

from .feature_store import decode_blob, encode_blob

MAGIC = b"DFHCKPT1"
_TENSOR = "tensor"


def encode_checkpoint(state: Dict[str, Any]) -> bytes:
    tensors: Dict[str, torch.Tensor] = {}

    def plain(v: Any, path: str) -> Any:
        if isinstance(v, torch.Tensor):
            tensors[path] = v
            return {_TENSOR: path}
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                raise TypeError(f"checkpoint: {path or 'the state'} has a key that is not a str")
            if _TENSOR in v and len(v) == 1:
                raise TypeError(f"checkpoint: {path} is a dict with the reserved lone key {_TENSOR!r}")
            return {k: plain(x, f"{path}/{k}") for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x, f"{path}/{i}") for i, x in enumerate(v)]
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise TypeError(f"checkpoint: {path} is a {type(v).__name__}, which the format does not hold")

    doc = json.dumps(plain(state, "")).encode()
    return MAGIC + struct.pack("<I", len(doc)) + doc + encode_blob(tensors)


def decode_checkpoint(data: bytes, device: Any = "cpu") -> Dict[str, Any]:
    if data[:len(MAGIC)] != MAGIC:
        raise ValueError(f"not a checkpoint of this format (starts {bytes(data[:8])!r}, not {MAGIC!r})")
    off = len(MAGIC)
    try:
        (n,) = struct.unpack_from("<I", data, off)
        doc = json.loads(data[off + 4:off + 4 + n])
        tensors = decode_blob(data[off + 4 + n:])
    except (struct.error, ValueError, TypeError) as e:
        raise ValueError(f"checkpoint: corrupt or truncated ({e})") from e

    def rich(v: Any) -> Any:
        if isinstance(v, dict):
            if len(v) == 1 and _TENSOR in v:
                try:
                    t = tensors[v[_TENSOR]]
                except KeyError:
                    raise ValueError(f"checkpoint: tensor {v[_TENSOR]!r} is named but not stored") from None
                return t if str(device) == "cpu" else t.to(device)
            return {k: rich(x) for k, x in v.items()}
        if isinstance(v, list):
            return [rich(x) for x in v]
        return v

    return rich(doc)
