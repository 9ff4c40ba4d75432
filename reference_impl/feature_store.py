"""Feature store: one file per sample under `features/`, written atomically.

`put` writes a temp file, fsyncs it and renames it into place, so a reader sees
either no blob or a whole one. The rename is durable only after `sync()`
(fsync of `features/`), which the producer calls once per batch before it
commits the batch: a committed sample's blob survives a power cut. Blobs are
deleted by the consumer only after the sample's durable ack (P7).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Dict, Iterable, List
from urllib.parse import quote, unquote

import torch

from . import failpoints
from .fileio import fsync_dir, makedirs_durable

SUFFIX = ".blob"


# Blob format: 4-byte little-endian header length, a JSON header
# [[key, dtype, shape, nbytes], ...], then each tensor's raw bytes in order.
# Not torch.save/torch.load: about 10x slower per blob (200-450 us), which
# the simulation engine pays thousands of times a minute.
def encode_blob(tensors: Dict[str, torch.Tensor]) -> bytes:
    parts, header = [], []
    for k, v in tensors.items():
        t = v.detach().to("cpu").contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header.append([k, str(t.dtype).replace("torch.", ""), list(t.shape), len(raw)])
        parts.append(raw)
    h = json.dumps(header).encode()
    return struct.pack("<I", len(h)) + h + b"".join(parts)


def decode_blob(data: bytes) -> Dict[str, torch.Tensor]:
    (n,) = struct.unpack_from("<I", data, 0)
    header = json.loads(data[4:4 + n])
    out, off = {}, 4 + n
    for k, dtype, shape, nbytes in header:
        dt = getattr(torch, dtype)
        if nbytes:
            t = torch.frombuffer(bytearray(data[off:off + nbytes]), dtype=dt).reshape(shape)
        else:
            t = torch.empty(shape, dtype=dt)
        out[k] = t
        off += nbytes
    if off != len(data):
        raise ValueError(f"feature blob: {len(data) - off} trailing bytes (corrupt or truncated)")
    return out


class FeatureStore:
    def __init__(self, root: str) -> None:
        self.root = root
        makedirs_durable(root)

    @property
    def uri(self) -> str:
        return "file://" + os.path.abspath(self.root)

    def _path(self, sample_id: str) -> str:
        return os.path.join(self.root, quote(sample_id, safe="") + SUFFIX)

    def put(self, sample_id: str, tensors: Dict[str, torch.Tensor]) -> Dict[str, str]:
        path = self._path(sample_id)
        tmp = f"{path}.tmp.{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(encode_blob(tensors))
                f.flush()
                os.fsync(f.fileno())
            failpoints.hit("features.before_rename")
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return {k: f"{sample_id}/{k}" for k in tensors}

    def sync(self) -> None:
        """Make the blobs renamed into place so far durable: fsync the directory (a rename
        without it is undone by a power failure)."""
        fsync_dir(self.root)

    def get(self, sample_id: str) -> Dict[str, torch.Tensor]:
        with open(self._path(sample_id), "rb") as f:
            return decode_blob(f.read())

    def exists(self, sample_id: str) -> bool:
        return os.path.exists(self._path(sample_id))

    def delete(self, sample_ids: Iterable[str]) -> List[str]:
        gone = []
        for sid in sample_ids:
            try:
                os.unlink(self._path(sid))
                gone.append(sid)
            except FileNotFoundError:
                pass
        if gone:
            self.sync()  # a deletion not made durable brings the blob back after a power cut
        return gone

    def list_ids(self) -> List[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(unquote(n[: -len(SUFFIX)]) for n in names if n.endswith(SUFFIX))

    def remove_temp_files(self) -> int:
        """Drop temp files left by a writer killed before its rename."""
        n = 0
        for name in os.listdir(self.root):
            if ".tmp." in name:
                try:
                    os.unlink(os.path.join(self.root, name))
                    n += 1
                except FileNotFoundError:
                    pass
        return n
