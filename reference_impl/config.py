"""The run config shared by the producer and the consumer (`config.json`).

Every field has a default; `load_config` rejects unknown keys and bad values
with a `ConfigError` that names the file, the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional


class ConfigError(ValueError):
    pass


EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_FAIL_CLOSED = 3  # stopped rather than risk wrong training (e.g. ledger lost)
EXIT_FAILED = 4  # a clean, reported failure (e.g. I/O errors past the retry budget)

DEVICES = ("cpu", "cuda", "auto")


@dataclass
class RunConfig:
    workdir: str = "."
    run_id: str = "run"
    seed: int = 0
    backend: str = "sqlite"
    # workload
    num_samples: int = 300
    seq_len: int = 8
    hidden: int = 16
    vocab: int = 64
    publish_batch: int = 8
    train_batch: int = 4
    accumulation: int = 2
    checkpoint_every: int = 1
    high_watermark: int = 64
    low_watermark: int = 32
    world_size: int = 1
    # devices
    producer_device: str = "cpu"
    consumer_device: str = "cpu"
    # pacing
    poll_interval_s: float = 0.005
    producer_delay_s: float = 0.0
    consumer_step_delay_s: float = 0.0
    starve_checkpoint_s: float = 0.5
    # I/O errors: bounded retry, then a clean reported failure
    io_retries: int = 3
    io_retry_delay_s: float = 0.02
    # training
    lr: float = 0.05
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def window(self) -> int:
        """Samples per optimizer step across all ranks."""
        return self.train_batch * self.accumulation * self.world_size

    @property
    def pre_o11(self) -> bool:
        """The pre-O1.1 layout: private stores, no reconcile (known bad)."""
        return self.backend == "private"

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def sample_id(self, index: int) -> str:
        return f"s{index:06d}"

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, source: str = "config") -> "RunConfig":
        def bad(key, allowed):
            raise ConfigError(f"{source}: key {key!r} has value {getattr(self, key)!r}; allowed: {allowed}")

        for key in ("num_samples", "seq_len", "hidden", "vocab", "publish_batch", "train_batch",
                    "accumulation", "checkpoint_every", "world_size", "high_watermark"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(key, "an integer >= 1")
        if not isinstance(self.low_watermark, int) or not 0 <= self.low_watermark < self.high_watermark:
            bad("low_watermark", f"an integer with 0 <= low_watermark < high_watermark ({self.high_watermark})")
        # Consumed only advances at a durable ack (every checkpoint_every steps),
        # so the producer must be allowed to run that far ahead or both stall.
        need = self.window * self.checkpoint_every
        if self.high_watermark < need:
            bad("high_watermark", f">= train_batch*accumulation*world_size*checkpoint_every = {need}")
        for key in ("producer_device", "consumer_device"):
            if getattr(self, key) not in DEVICES:
                bad(key, " | ".join(DEVICES))
        for key in ("poll_interval_s", "producer_delay_s", "consumer_step_delay_s",
                    "starve_checkpoint_s", "io_retry_delay_s", "lr"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                bad(key, "a number >= 0")
        if not isinstance(self.io_retries, int) or self.io_retries < 0:
            bad("io_retries", "an integer >= 0")
        if not isinstance(self.backend, str) or not self.backend:
            bad("backend", "sqlite | inmemory | private | noop | package.module:Factory")
        return self


def config_from_dict(d: Dict[str, Any], source: str = "config") -> RunConfig:
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    return RunConfig(**d).validate(source)


def read_json_file(path: str, what: str = "JSON", error: type = ValueError) -> Any:
    """Load a JSON input file; every failure raises `error` with a message that names the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise error(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"{what} file {path} is a directory") from None
    except UnicodeDecodeError as e:
        raise error(f"{what} file {path} is not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise error(f"{what} file {path} is not valid JSON: {e}") from None


def load_config(path: str) -> RunConfig:
    return config_from_dict(read_json_file(path, "config", ConfigError), source=path)


def write_config(cfg: RunConfig, path: Optional[str] = None) -> str:
    path = path or cfg.path("config.json")
    with open(path, "w") as f:
        json.dump(cfg.to_dict(), f, indent=2, sort_keys=True)
    return path
