import pytest

from harness.faults import make_schedule
from harness.scenario import ScenarioError, load_scenario, scenario_from_dict, scenario_paths


def test_every_scenario_file_loads_and_round_trips(tmp_path):
    paths = scenario_paths()
    assert len(paths) >= 19
    for p in paths:
        sc = load_scenario(str(p))
        assert sc.description, p
        again = tmp_path / f"{sc.name}.toml"
        again.write_text(sc.to_toml())
        back = load_scenario(str(again))
        assert make_schedule(back, 3) == make_schedule(sc, 3), p


@pytest.mark.parametrize("data,fragment", [
    ({"name": "x", "workload": {"samples": "many"}}, "'workload.samples' has value 'many'"),
    ({"name": "x", "workload": {"sampels": 3}}, "'workload.sampels'.*allowed: one of samples"),
    ({"name": "x", "store": {"backend": "mongo"}}, "'store.backend' has value 'mongo'.*sqlite \\| inmemory"),
    ({"name": "x", "faults": {"explicit": [{"kind": "kill", "target": "producer"}]}}, "exactly one of at_published"),
    ({"name": "x", "faults": {"explicit": [{"kind": "failpoint", "target": "consumer", "point": "nope"}]}},
     "'point' has value 'nope'"),
    ({"name": "x", "faults": {"random": {"count": 2, "kinds": ["explode"]}}}, "'faults.random.kinds'"),
    ({"name": "x", "expect": {"violates": ["P9"]}}, "'expect.violates'"),
    ({"name": "bad name"}, "'name'"),
])
def test_bad_scenario_errors_name_key_value_and_allowed(data, fragment):
    with pytest.raises(ScenarioError, match=fragment) as e:
        scenario_from_dict(data, source="my.toml")
    assert str(e.value).startswith("my.toml")


def test_bad_toml_and_unknown_name(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text("name = \n")
    with pytest.raises(ScenarioError, match="broken.toml: not valid TOML"):
        load_scenario(str(p))
    with pytest.raises(ScenarioError, match="unknown scenario 'no-such'; known: .*baseline"):
        load_scenario("no-such")


def test_schedule_is_a_pure_function_of_scenario_and_seed():
    sc = load_scenario("kill-random")
    a, b = make_schedule(sc, 5), make_schedule(sc, 5)
    assert a == b and len(a.faults) == 3
    assert any(make_schedule(sc, s) != a for s in range(6, 10))
    assert all(f.target in ("producer", "consumer") for f in a.faults)
