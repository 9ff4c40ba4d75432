import json

import pytest

from reference_impl.config import ConfigError, RunConfig, config_from_dict, load_config


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown key.*publish_btach"):
        config_from_dict({"publish_btach": 3})


@pytest.mark.parametrize("key,value,fragment", [
    ("low_watermark", 80, "low_watermark"),
    ("train_batch", 0, "train_batch"),
    ("consumer_device", "tpu", "cpu | cuda | auto"),
])
def test_bad_values_name_key_value_and_allowed(key, value, fragment):
    with pytest.raises(ConfigError, match=fragment) as e:
        config_from_dict({key: value}, source="cfg.json")
    assert "cfg.json" in str(e.value) and repr(value) in str(e.value)


def test_load_config_errors_name_the_file(tmp_path):
    p = tmp_path / "c.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="c.json.*not valid JSON"):
        load_config(str(p))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path))
    p.write_text(json.dumps(RunConfig(workdir=str(tmp_path)).to_dict()))
    assert load_config(str(p)).num_samples == 300


def test_high_watermark_must_cover_k_optimizer_windows():
    with pytest.raises(ConfigError,
                       match=r"high_watermark.*64.*train_batch\*accumulation\*world_size\*checkpoint_every = 80"):
        config_from_dict({"checkpoint_every": 10})
