"""Scenario files: `scenarios/<name>.toml`, loaded and validated.

A scenario names a topology, a store backend, a workload, faults (explicit and
seeded-random) and the expected verdict. Every error names the file, the key,
the value and what is allowed; unknown keys are errors (a typo must not
silently turn a fault off).

    name = "kill-random"
    description = "random SIGKILLs of the producer and the consumer"
    [topology]   consumer_ranks, producer_device, consumer_device
    [store]      backend = "sqlite" | "inmemory" | "private" | "pkg.mod:Factory"
    [workload]   samples, publish_batch, train_batch, accumulation, checkpoint_every,
                 high_watermark, low_watermark, producer_delay_s, consumer_step_delay_s
    [faults]             powercut_mode = "clean" | "torn" (how a power cut rebuilds the work dir)
    [[faults.explicit]]  kind = "kill"|"pause"|"failpoint"|"powercut", target, trigger, ...
                         (a powercut hits every process: no target; failpoint action "powercut"
                         stops the process at the point and the runner cuts power to all)
    [faults.random]      count, kinds, targets, points, actions, ...
    [expect]     outcome = ["completed"], violates = [] | ["P1", "P2"], bound_s,
                 sometimes = [conditions the campaign must reach] (harness.coverage.sometimes)
"""

from __future__ import annotations

import copy
import math
import os

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from .exit_codes import UsageError
from .faults import NETWORK_KINDS, RANK_TARGET, Fault, FaultError, fault_from_dict, faults_table, has_powercut

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"

NETWORKED_BACKENDS = ("inmemory", "redis")
SERVER_BACKENDS = ("inmemory", "redis")  # backends that run a store server (fault target store_server)
#: How the run's Redis server persists (redis backend): see harness/stores/redis_server.py.
PERSISTENCE = ("always", "everysec", "snapshot")
OUTCOMES = ("completed", "fail_closed", "failed", "timeout")
PROPS = tuple(f"P{i}" for i in range(1, 9))
DEVICES = ("cpu", "cuda", "auto")

TOPOLOGY_KEYS = {"consumer_ranks": 1, "producer_device": "cpu", "consumer_device": "cpu",
                 # a protocol variant (bug-zoo member) applied in every process, "" for the reference
                 "variant": ""}
STORE_KEYS = {"backend": "sqlite", "persistence": "always"}
WORKLOAD_KEYS = {
    "samples": 300, "publish_batch": 8, "train_batch": 4, "accumulation": 2, "checkpoint_every": 1,
    "high_watermark": 64, "low_watermark": 32, "producer_delay_s": 0.0, "consumer_step_delay_s": 0.0,
    "starve_checkpoint_s": 0.5, "io_retries": 3,
}
EXPECT_KEYS = {"outcome": ["completed"], "violates": [], "bound_s": 60.0, "timeout_s": 120.0,
               # true: planned faults that did not land do not make the run inconclusive
               "allow_missed_faults": False,
               # sometimes-conditions (harness.coverage.sometimes) the scenario exists to reach
               "sometimes": []}
TOP_KEYS = {"name", "description", "topology", "store", "workload", "faults", "expect", "tags"}
# Bounds: a run is a few processes on one machine, and per-sample structures
# (the witness, the final state's planned ids) must stay small.
MAX_SAMPLES = 1_000_000
MAX_CONSUMER_RANKS = 16
MAX_TIMEOUT_S = 86_400.0


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class ScenarioError(UsageError):
    pass


@dataclass
class Scenario:
    name: str
    description: str
    path: Optional[str]
    topology: Dict[str, Any]
    store: Dict[str, Any]
    workload: Dict[str, Any]
    explicit_faults: List[Fault]
    random_faults: Dict[str, Any]
    expect: Dict[str, Any]
    tags: List[str] = field(default_factory=list)
    powercut_mode: str = "clean"

    @property
    def has_powercut(self) -> bool:
        """Whether a schedule of this scenario can hold a power cut (explicit, random, or a failpoint)."""
        return has_powercut(self.explicit_faults, self.random_faults)

    @property
    def backend(self) -> str:
        return self.store["backend"]

    def with_backend(self, backend: str) -> "Scenario":
        s = copy.deepcopy(self)
        s.store["backend"] = backend
        return s

    def to_toml(self) -> str:
        """Serialise back to a scenario file (used by `shrink`)."""
        out = [f"name = {_toml(self.name)}", f"description = {_toml(self.description)}"]
        if self.tags:
            out.append(f"tags = {_toml(self.tags)}")
        for table, d in (("topology", self.topology), ("store", self.store), ("workload", self.workload)):
            out.append(f"\n[{table}]")
            out += [f"{k} = {_toml(v)}" for k, v in d.items()]
        # Written whenever power can be cut, so the file says how the work dir is rebuilt.
        if self.powercut_mode != "clean" or has_powercut(self.explicit_faults, self.random_faults):
            out.append("\n[faults]")
            out.append(f"powercut_mode = {_toml(self.powercut_mode)}")
        for f in self.explicit_faults:
            out.append("\n[[faults.explicit]]")
            out += [f"{k} = {_toml(v)}" for k, v in fault_from_dict(f, self.name).to_dict().items()]
        if self.random_faults.get("count"):
            out.append("\n[faults.random]")
            out += [f"{k} = {_toml(v)}" for k, v in self.random_faults.items()]
        out.append("\n[expect]")
        out += [f"{k} = {_toml(v)}" for k, v in self.expect.items()]
        return "\n".join(out) + "\n"


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def scenario_paths() -> List[Path]:
    return sorted(SCENARIO_DIR.glob("*.toml"))


def find_scenario(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or os.sep in name_or_path:
        if not p.exists():
            raise ScenarioError(f"scenario file {name_or_path} does not exist")
        if p.is_dir():
            raise ScenarioError(f"scenario file {name_or_path} is a directory (a .toml file was expected)")
        return p
    cand = SCENARIO_DIR / f"{name_or_path}.toml"
    if cand.exists():
        return cand
    known = ", ".join(x.stem for x in scenario_paths())
    raise ScenarioError(f"unknown scenario {name_or_path!r}; known: {known} (or a path to a .toml file)")


def load_scenario(name_or_path: str) -> Scenario:
    path = find_scenario(name_or_path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{path}: not UTF-8 text ({e})") from None
    return scenario_from_dict(data, str(path))


def _errors(source: str):
    """A function making the ScenarioError for (key, value, what is allowed) in `source`."""
    def err(key: str, value: Any, allowed: str) -> ScenarioError:
        return ScenarioError(f"{source}: key {key!r} has value {value!r}; allowed: {allowed}")

    return err


def _table(data: Dict[str, Any], key: str, defaults: Dict[str, Any], err) -> Dict[str, Any]:
    """The table `key` over its defaults: only known keys, each of its default's type."""
    raw = data.get(key, {})
    if not isinstance(raw, dict):
        raise err(key, raw, "a table")
    for k, v in raw.items():
        if k not in defaults:
            raise err(f"{key}.{k}", v, "one of " + ", ".join(defaults))
        dv = defaults[k]
        if isinstance(dv, bool) != isinstance(v, bool) or (
                isinstance(dv, (int, float)) and not isinstance(v, (int, float))) or (
                isinstance(dv, str) and not isinstance(v, str)) or (
                isinstance(dv, list) and not isinstance(v, list)):
            raise err(f"{key}.{k}", v, f"a {type(dv).__name__}")
        if isinstance(dv, int) and not isinstance(dv, bool) and not isinstance(v, int):
            raise err(f"{key}.{k}", v, "an integer")
    return {**copy.deepcopy(defaults), **raw}


def scenario_from_dict(data: Dict[str, Any], source: str = "scenario") -> Scenario:
    err = _errors(source)
    unknown = set(data) - TOP_KEYS
    if unknown:
        k = sorted(unknown)[0]
        raise err(k, data[k], "one of the keys " + ", ".join(sorted(TOP_KEYS)))
    name = data.get("name")
    if not isinstance(name, str) or not name or any(c in name for c in "/ \\"):
        raise err("name", name, "a non-empty string without spaces or slashes")
    desc = data.get("description", "")
    if not isinstance(desc, str):
        raise err("description", desc, "a string")
    topology = _topology(data, err)
    store = _store(data, err)
    workload = _workload(data, topology, err)
    explicit, rnd, powercut_mode = _faults(data, source, err)
    expect = _expect(data, err)
    tags = data.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise err("tags", tags, "a list of strings")
    sc = Scenario(name, desc, source, topology, store, workload, explicit, rnd, expect, tags, powercut_mode)
    check_fault_targets(sc)
    return sc


def _topology(data: Dict[str, Any], err) -> Dict[str, Any]:
    topology = _table(data, "topology", TOPOLOGY_KEYS, err)
    if not 1 <= topology["consumer_ranks"] <= MAX_CONSUMER_RANKS:
        raise err("topology.consumer_ranks", topology["consumer_ranks"], f"an integer 1..{MAX_CONSUMER_RANKS}")
    v = topology["variant"]
    if v and (v.count(":") != 1 or not all(part.strip() for part in v.split(":"))):
        raise err("topology.variant", v, "'' (the reference) or package.module:name")
    for k in ("producer_device", "consumer_device"):
        if topology[k] not in DEVICES:
            raise err(f"topology.{k}", topology[k], " | ".join(DEVICES))
    return topology


def _store(data: Dict[str, Any], err) -> Dict[str, Any]:
    store = _table(data, "store", STORE_KEYS, err)
    b = store["backend"]
    if b not in ("sqlite", "inmemory", "redis", "private", "noop") and ":" not in b:
        raise err("store.backend", b, "sqlite | inmemory | redis | private | noop | package.module:Factory")
    if store["persistence"] not in PERSISTENCE:
        raise err("store.persistence", store["persistence"], " | ".join(PERSISTENCE))
    if store["persistence"] != "always" and b != "redis":
        raise err("store.persistence", store["persistence"], "'always' unless store.backend = 'redis'")
    return store


def _workload(data: Dict[str, Any], topology: Dict[str, Any], err) -> Dict[str, Any]:
    workload = _table(data, "workload", WORKLOAD_KEYS, err)
    for k in ("samples", "publish_batch", "train_batch", "accumulation", "checkpoint_every", "high_watermark"):
        if workload[k] < 1:
            raise err(f"workload.{k}", workload[k], "an integer >= 1")
    if workload["samples"] > MAX_SAMPLES:
        raise err("workload.samples", workload["samples"], f"an integer 1..{MAX_SAMPLES}")
    for k in ("producer_delay_s", "consumer_step_delay_s", "starve_checkpoint_s"):
        if not _finite(workload[k]) or workload[k] < 0:
            raise err(f"workload.{k}", workload[k], "a finite number >= 0")
    if workload["io_retries"] < 0:
        raise err("workload.io_retries", workload["io_retries"], "an integer >= 0")
    if not 0 <= workload["low_watermark"] < workload["high_watermark"]:
        raise err("workload.low_watermark", workload["low_watermark"],
                  f"0 <= low_watermark < high_watermark ({workload['high_watermark']})")
    need = workload["train_batch"] * workload["accumulation"] * topology["consumer_ranks"] * workload[
        "checkpoint_every"]
    if workload["high_watermark"] < need:
        raise err("workload.high_watermark", workload["high_watermark"],
                  f">= train_batch*accumulation*consumer_ranks*checkpoint_every = {need}")
    return workload


def _faults(data: Dict[str, Any], source: str, err):
    """(explicit faults, the random-fault table, the power-cut mode) of the `faults` table (`harness.faults.table`)."""
    try:
        powercut_mode, explicit, rnd = faults_table(data.get("faults", {}), source)
    except FaultError as e:
        raise ScenarioError(str(e)) from None
    return explicit, rnd, powercut_mode


def _expect(data: Dict[str, Any], err) -> Dict[str, Any]:
    expect = _table(data, "expect", EXPECT_KEYS, err)
    for o in expect["outcome"]:
        if o not in OUTCOMES:
            raise err("expect.outcome", expect["outcome"], "a list drawn from " + ", ".join(OUTCOMES))
    for p in expect["violates"]:
        if p not in PROPS:
            raise err("expect.violates", expect["violates"], "a list drawn from " + ", ".join(PROPS))
    from .coverage.sometimes import CONDITIONS

    for c in expect["sometimes"]:
        if c not in CONDITIONS:
            raise err("expect.sometimes", expect["sometimes"], "a list drawn from " + ", ".join(CONDITIONS))
    for k in ("timeout_s", "bound_s"):
        if not _finite(expect[k]) or not 0 < expect[k] <= MAX_TIMEOUT_S:
            raise err(f"expect.{k}", expect[k], f"a finite number of seconds, 0 < {k} <= {MAX_TIMEOUT_S:.0f}")
    return expect


def check_fault_targets(sc: Scenario, backend_from: str = "store.backend") -> None:
    """Every fault target exists in the scenario's topology (a fault that cannot land is bad input).

    `store_server` exists only with the inmemory backend; `consumer.rankN`
    only with N < topology.consumer_ranks.
    """
    source = sc.path or sc.name
    ranks = sc.topology["consumer_ranks"]

    def check(t: Any, key: str) -> None:
        if t == "store_server" and sc.backend not in SERVER_BACKENDS and ":" not in sc.backend:
            raise ScenarioError(f"{source}: key {key!r} has value 'store_server', but {backend_from} = "
                                f"{sc.backend!r} runs no store server; allowed: store_server only with "
                                f"backend {' or '.join(SERVER_BACKENDS)}")
        m = RANK_TARGET.match(t) if isinstance(t, str) else None
        if m and int(m.group(1)) >= ranks:
            raise ScenarioError(f"{source}: key {key!r} has value {t!r}, but topology.consumer_ranks = {ranks}; "
                                f"allowed: consumer.rank0..consumer.rank{ranks - 1}")

    network = [f"faults.explicit[{i}].kind" for i, f in enumerate(sc.explicit_faults) if f.kind in NETWORK_KINDS]
    if sc.random_faults.get("count") and set(sc.random_faults["kinds"]) & set(NETWORK_KINDS):
        network.append("faults.random.kinds")
    if network and sc.backend not in NETWORKED_BACKENDS and ":" not in sc.backend:
        raise ScenarioError(f"{source}: key {network[0]!r} is a network fault, but {backend_from} = {sc.backend!r} "
                            f"has no network between its clients and a server; allowed: network faults only with "
                            f"backend {' or '.join(NETWORKED_BACKENDS)}")
    for i, f in enumerate(sc.explicit_faults):
        check(f.target, f"faults.explicit[{i}].target")
        if getattr(f, "rank", None) is not None and f.rank >= ranks:
            raise ScenarioError(f"{source}: key 'faults.explicit[{i}].rank' has value {f.rank!r}, but "
                                f"topology.consumer_ranks = {ranks}; allowed: 0..{ranks - 1}")
    if sc.random_faults.get("count"):
        for t in sc.random_faults["targets"]:
            check(t, "faults.random.targets")
