"""The consumer's checkpoint format (`reference_impl.checkpoint_file`): round trip, refusals."""

from __future__ import annotations

import pickle

import pytest
import torch

from reference_impl.checkpoint_file import MAGIC, decode_checkpoint, encode_checkpoint
from reference_impl.model import DraftModel


def test_a_consumer_state_round_trips_bit_for_bit():
    model = DraftModel(8, 4, 3, seed=1)
    with torch.no_grad():
        model.witness.add_(torch.tensor([1.0, 2.0, 0.0]))
    state = {"global_step": 7, "writer_inc": 2, "unacked": ["s-1", "s-2"], "acked_step": 6, "ledger_id": None,
             "model": model.state_dict(), "optim": model.optimizer(0.5).state_dict(), "empty": torch.zeros(0, 3)}
    back = decode_checkpoint(encode_checkpoint(state))
    assert {k: v for k, v in back.items() if k not in ("model", "empty")} == \
        {k: v for k, v in state.items() if k not in ("model", "empty")}
    assert back["empty"].shape == (0, 3)
    for k, t in state["model"].items():
        assert back["model"][k].dtype == t.dtype and torch.equal(back["model"][k], t), k
    fresh = DraftModel(8, 4, 3, seed=2)
    fresh.load_state_dict(back["model"])
    assert fresh.witness.tolist() == [1.0, 2.0, 0.0]


def test_a_pickle_a_truncated_file_or_an_unstorable_value_is_refused():
    data = encode_checkpoint({"global_step": 1, "w": torch.ones(4)})
    with pytest.raises(ValueError, match="not a checkpoint"):
        decode_checkpoint(pickle.dumps({"global_step": 1}))
    for cut in (len(MAGIC) + 2, len(data) - 3):
        with pytest.raises(ValueError, match="corrupt or truncated"):
            decode_checkpoint(data[:cut])
    with pytest.raises(TypeError, match="/when is a set"):
        encode_checkpoint({"when": {1, 2}})
    with pytest.raises(TypeError, match="reserved"):
        encode_checkpoint({"x": {"tensor": "y"}})
