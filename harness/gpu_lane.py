"""`python -m harness gpu-lane`: every GPU check in one command, on one GPU or several.

1. the gpu-marked tests (`pytest -m gpu tests/`), in a child interpreter;
2. a campaign of every shipped scenario whose name ends in `-gpu`
   (`--seeds`, default 0..5), with its summary table.

Ranks are placed on `cuda:(rank mod device count)`, so the same scenarios run
on one GPU (ranks share it, gloo) or on several (NCCL where each rank has its
own). Without a usable CUDA device the lane stops before anything runs with
exit 2 and says why (a torch build without CUDA, or no device visible).
Exit: 0 both passed; 1 a test failed or a run was unexpected; 3 the lane
could not finish (a harness error, an inconclusive run, no gpu test found).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import List

from .exit_codes import ExitCode, HarnessError, UsageError

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_cuda() -> str:
    """A one-line description of the visible CUDA devices, or a UsageError saying what is missing."""
    import torch

    if torch.version.cuda is None:
        raise UsageError(f"gpu-lane: this torch build ({torch.__version__}) has no CUDA support; install a CUDA "
                         "build of torch on a machine with an NVIDIA GPU")
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise UsageError("gpu-lane: torch.cuda.is_available() is False: no CUDA device is visible"
                         + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else
                            " (is the NVIDIA driver loaded?)"))
    n = torch.cuda.device_count()
    return f"{n} CUDA device(s): " + ", ".join(torch.cuda.get_device_name(i) for i in range(n))


def gpu_scenarios() -> List[str]:
    from .scenario import scenario_paths

    return [p.stem for p in scenario_paths() if p.stem.endswith("-gpu")]


def run_gpu_tests() -> int:
    """The gpu-marked tests in a child interpreter; their exit code (pytest's)."""
    tests = os.path.join(_REPO_ROOT, "tests")
    if not os.path.isdir(tests):
        raise HarnessError(f"gpu-lane: no tests folder at {tests} (the lane runs from a checkout of the project)")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", tests]
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=_REPO_ROOT, env=env, check=False).returncode


def cmd_gpu_lane(args) -> int:
    from .arguments import jobs_of
    from .campaign import exit_code, parse_seeds, run_campaign, summary_table
    from .cli import summary_line
    from .paths import check_output_dir

    devices = check_cuda()  # first: on a machine without CUDA nothing else matters
    jobs = jobs_of(args)
    seeds = parse_seeds(args.seeds)
    check_output_dir(args.reports, "--reports")
    print(f"gpu-lane: {devices}", flush=True)
    scenarios = gpu_scenarios()
    if not scenarios:
        raise HarnessError("gpu-lane: no shipped scenario ends in -gpu")
    tests_rc = run_gpu_tests()
    print(f"gpu-lane: campaign of {', '.join(scenarios)}, seeds {args.seeds}, -j {jobs}", flush=True)
    summary = run_campaign(scenarios, seeds, jobs=jobs, reports_dir=args.reports, junit=args.junit)
    print(summary_table(summary))
    print(summary_line(summary))
    campaign_rc = exit_code(summary)
    tests_word = {0: "passed", 1: "FAILED", 5: "NONE COLLECTED"}.get(tests_rc,
                                                                     f"could not run (pytest exit {tests_rc})")
    print(f"gpu-lane: gpu-marked tests {tests_word}; campaign exit {campaign_rc}")
    return lane_exit(tests_rc, campaign_rc)


def lane_exit(pytest_rc: int, campaign_rc: int) -> int:
    """1 if a test failed or a run was unexpected; else 3 if either could not finish (pytest's other codes,
    no test collected); else 0."""
    tests_code = {0: ExitCode.AS_EXPECTED, 1: ExitCode.UNEXPECTED}.get(pytest_rc, ExitCode.HARNESS)
    if ExitCode.UNEXPECTED in (tests_code, campaign_rc):
        return int(ExitCode.UNEXPECTED)
    return max(int(tests_code), int(campaign_rc))
