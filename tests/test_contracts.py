import json

import pytest
import torch

from reference_impl.contracts import FeatureSpec, SampleRef, assert_no_tensors, ref_to_dict


def make_ref(**kw):
    base = dict(sample_id="s-ü-1", run_id="r", source_task_id="t", feature_store_uri="file:///x",
                feature_keys={"h": "s/h"}, feature_specs={"h": FeatureSpec("h", (2, 3), "float32", device_hint="cpu")},
                strategy="eagle3", target_model_version="v", num_tokens=3, estimated_bytes=24,
                metadata={"nested": {"a": [1, 2]}})
    base.update(kw)
    return SampleRef(**base)


def test_json_round_trip_keeps_every_field():
    ref = make_ref()
    back = SampleRef.from_json(ref.to_json())
    assert back == ref
    assert ref_to_dict(back) == ref_to_dict(ref)
    assert json.loads(ref.to_json())["feature_specs"]["h"]["shape"] == [2, 3]


def test_tensor_guard_names_the_path():
    with pytest.raises(TypeError, match=r"metadata.*bad"):
        assert_no_tensors(ref_to_dict(make_ref(metadata={"bad": torch.zeros(1)})))
    assert_no_tensors(ref_to_dict(make_ref()))  # plain data passes
