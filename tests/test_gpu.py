"""GPU runs: skipped cleanly without CUDA, run for real with it."""

import pytest
import torch

from harness.cli import main
from harness.process_engine.runner import run_scenario

HAS_CUDA = torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_single_rank_pipeline_on_cuda(tmp_path):
    r = run_scenario("baseline-gpu", 0, reports_dir=str(tmp_path))
    assert r.as_expected and r.outcome == "completed", r.verdict["reasons"]
    import os

    from harness.history import load_merged

    starts = [e for e in load_merged(os.path.join(r.report_dir, "history.jsonl"))
              if e.get("proc") == "consumer" and e.get("ev") == "start"]
    assert starts and all(e["device"].startswith("cuda") for e in starts)


@pytest.mark.skipif(HAS_CUDA, reason="checks the error given where CUDA is absent")
def test_cuda_demanded_without_a_gpu_is_a_clear_usage_error(capsys):
    assert main(["run", "baseline-gpu"]) == 2
    err = capsys.readouterr().err
    assert "consumer_device" in err or "producer_device" in err
    assert "'cuda'" in err and "torch.cuda.is_available() is False" in err
