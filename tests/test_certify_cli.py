"""`python -m harness certify` end to end: exit codes, certificates, loader errors."""

import json
import os
import signal
import subprocess
import sys

import pytest

from harness.certify import NOT_RUN, certify
from harness.certify.certificate import Budget
from harness.certify.cli import main
from reference_impl.stores.memory import InMemoryMetadataStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "harness.certify", *args, "--reports-dir", str(tmp_path / "reports")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout,
    )


def _certificate(tmp_path):
    (d,) = os.listdir(tmp_path / "reports")
    assert d.startswith("certify-")
    with open(tmp_path / "reports" / d / "certificate.json") as f:
        cert = json.load(f)
    md = (tmp_path / "reports" / d / "certificate.md").read_text()
    return cert, md


@pytest.mark.slow
def test_sqlite_store_passes_tiers_1_to_3_quick(tmp_path):
    r = _run(["reference_impl.stores.sqlite:SQLiteMetadataStore", "--quick", "--tiers", "1,2,3", "--seed", "7"],
             tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[certify] tier 3 crash: passed" in r.stderr  # progress lines on stderr
    cert, md = _certificate(tmp_path)
    status = {t["tier"]: t["status"] for t in cert["tiers"]}
    assert status == {1: "passed", 2: "passed", 3: "passed", 4: "not selected", 5: "not selected", 6: "not applicable"}
    assert cert["profile"] == "durable" and cert["seed"] == 7 and cert["budget"] == "quick"
    assert cert["tiers"][2]["counters"]["kills"] > 0
    assert "PASSED the selected tiers" in md and "| 3 crash | passed" in md


@pytest.mark.slow
def test_inmemory_store_passes_1_and_2_and_3_4_are_not_applicable(tmp_path):
    r = _run(["reference_impl.stores.memory:InMemoryMetadataStore", "--quick", "--examples", "30", "--seed", "3"],
             tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    cert, md = _certificate(tmp_path)
    status = {t["tier"]: t["status"] for t in cert["tiers"]}
    assert status == {1: "passed", 2: "passed", 3: "not applicable", 4: "not applicable", 5: "not applicable",
                      6: "not applicable"}
    assert cert["profile"] == "volatile"
    assert "CERTIFIED (volatile profile)" in cert["verdict"]


def test_noop_store_gets_one_readable_verdict_not_counterexamples(tmp_path):
    r = _run(["reference_impl.stores.noop:NoOpMetadataStore", "--quick", "--tiers", "1", "--seed", "5"], tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    cert, md = _certificate(tmp_path)
    assert cert["verdict_code"] == "retains_nothing"
    assert r.stdout.startswith("REJECTED: retains nothing")
    assert all(t["status"] == "not run" and not t["counterexamples"] for t in cert["tiers"])
    assert "retains nothing" in md and "Counterexamples" not in md


@pytest.mark.slow
def test_a_tier1_counterexample_is_minimal_with_guarantee_and_cause(tmp_path):
    r = _run(["tests.store_zoo:NoneErasesStepStore", "--quick", "--tiers", "1", "--seed", "5"], tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    cert, md = _certificate(tmp_path)
    (cex,) = cert["tiers"][0]["counterexamples"]
    calls = [s for s in cex["steps"] if s.startswith("store.")]
    assert len(calls) == 2, cex["steps"]
    assert cex["reproduce"].startswith("python -m harness certify tests.store_zoo:NoneErasesStepStore")
    assert "--seed 5" in cex["reproduce"]
    assert cex["guarantee"].startswith("global_step is the last non-None step")
    assert "overwrites the stored step" in cex["cause"]
    assert "Counterexamples" in md and "Reproduce:" in md and "**Guarantee:**" in md
    # the standalone reproducer replays the minimal steps: 1 on the bug, 0 on a correct store
    body = open(cex["reproducer"]).read()
    assert "import harness" not in body and "from harness" not in body
    env = dict(os.environ, PYTHONPATH=ROOT)
    bad = subprocess.run([sys.executable, cex["reproducer"]], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1 and "global_step" in bad.stdout, bad.stdout + bad.stderr
    good = subprocess.run([sys.executable, cex["reproducer"], "tests.store_zoo:SqliteStore"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert good.returncode == 0, good.stdout + good.stderr


@pytest.mark.parametrize(
    "spec, cause",
    [
        ("no_such_module_xyz:Store", "module 'no_such_module_xyz' not found"),
        ("reference_impl.stores.sqlite:NoSuchStore", "attribute 'NoSuchStore' missing"),
        ("tests.store_zoo:NOT_A_STORE", "not a store"),
        ("tests.store_zoo:MissingMethodsStore", "not a store: MissingMethodsStore is missing is_committed"),
        ("tests.store_zoo:FailingConstructorStore", "constructor failed"),
        ("tests.store_zoo:failing_constructor", "cannot connect to backend"),
        ("reference_impl.stores.sqlite", "not of the form module:attr"),
    ],
)
def test_bad_factory_exits_2_naming_the_cause(spec, cause, tmp_path, capsys):
    assert main([spec, "--reports-dir", str(tmp_path), "--quick"]) == 2
    err = capsys.readouterr().err
    assert cause in err, err
    assert not os.listdir(tmp_path)  # no certificate for bad input


def test_bad_options_exit_2(tmp_path, capsys):
    spec = "reference_impl.stores.memory:InMemoryMetadataStore"
    from harness.certify.tiers import NUMBERS

    assert main([spec, "--tiers", str(max(NUMBERS) + 1), "--reports-dir", str(tmp_path)]) == 2
    assert "not a tier" in capsys.readouterr().err
    assert main([spec, "--profile", "eventual", "--reports-dir", str(tmp_path)]) == 2
    assert main([spec, "--quick", "--thorough"]) == 2


@pytest.mark.slow
def test_callable_taking_a_working_directory_is_accepted(tmp_path):
    cert = certify("tests.store_zoo:factory_in_dir", budget=Budget("t", 10, 15, 0.5, 10, 1, 5), tiers=[1],
                   reports_dir=None, progress=None, seed=1)
    assert cert.profile == "durable" and cert.factory_call.startswith("callable")
    assert cert.exit_code == 0, cert.tier(1).counterexamples


def test_tier4_without_the_runner_is_not_run_and_fails_certification(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "harness.process_engine.runner", None)  # import fails
    cert = certify("reference_impl.stores.sqlite:SQLiteMetadataStore", tiers=[4], reports_dir=str(tmp_path),
                   progress=None, seed=1)
    t4 = cert.tier(4)
    assert t4.status == NOT_RUN and t4.reason == "not run (harness runner unavailable)"
    assert cert.exit_code == 1 and "REJECTED" in cert.verdict


def test_volatile_profile_never_reports_crash_tiers_as_passed(tmp_path):
    cert = certify("reference_impl.stores.sqlite:SQLiteMetadataStore", profile="volatile", tiers=[3, 4],
                   reports_dir=None, progress=None, seed=1)
    assert [t.status for t in cert.tiers if t.tier in (3, 4)] == ["not applicable", "not applicable"]
    assert "passed" not in [t.status for t in cert.tiers]


@pytest.mark.slow
def test_tier4_runs_the_reference_pipeline_on_the_backend(tmp_path):
    cert = certify("reference_impl.stores.sqlite:SQLiteMetadataStore", tiers=[4], reports_dir=str(tmp_path),
                   budget=Budget("t4", 10, 10, 0.5, 10, 1, 5), progress=None, seed=3)
    t4 = cert.tier(4)
    assert t4.status == "passed", (t4.reason, t4.counterexamples, t4.notes)
    assert t4.counters == {"runs": 3, "valid": 3}
    assert os.path.isdir(os.path.join(cert.report_dir, "tier4"))


class _SegfaultingStore(InMemoryMetadataStore):
    """Its process dies abruptly (as with a crash in a C extension) on the third commit."""

    def commit_samples(self, refs):
        if len(self._order) > 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().commit_samples(refs)


@pytest.mark.slow
def test_a_store_that_crashes_the_process_is_rejected_not_passed():
    cert = certify(_SegfaultingStore, budget=Budget("t", 20, 10, 0.5, 5, 1, 5), tiers=[1, 2], reports_dir=None,
                   progress=None, seed=1)
    assert [cert.tier(n).status for n in (1, 2)] == ["failed", "failed"]
    msg = cert.tier(1).counterexamples[0].message
    assert "killed by SIGKILL during commit_sample" in msg, msg
