import os

import pytest
import torch

from reference_impl import failpoints
from reference_impl.feature_store import FeatureStore, decode_blob, encode_blob


def test_blob_round_trip_keeps_dtype_shape_and_values():
    d = {"ids": torch.arange(6).reshape(2, 3), "h": torch.randn(3, 4), "empty": torch.zeros(0, 5),
         "half": torch.ones(2, dtype=torch.float16)}
    back = decode_blob(encode_blob(d))
    for k, v in d.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k


def test_truncated_blob_is_rejected():
    data = encode_blob({"h": torch.randn(4)})
    with pytest.raises(ValueError, match="trailing bytes"):
        decode_blob(data + b"x")


def test_crash_before_rename_leaves_no_blob_and_temp_is_removed(tmp_path):
    fs = FeatureStore(str(tmp_path))
    failpoints.configure([{"point": "features.before_rename", "action": "enospc", "hit": 1}])
    try:
        with pytest.raises(OSError):
            fs.put("s1", {"h": torch.ones(2)})
    finally:
        failpoints.configure(None)
    assert not fs.exists("s1") and os.listdir(tmp_path) == []
    fs.put("s1", {"h": torch.ones(2)})
    assert fs.list_ids() == ["s1"] and torch.equal(fs.get("s1")["h"], torch.ones(2))
    assert fs.delete(["s1", "s2"]) == ["s1"] and fs.list_ids() == []
