"""Fixtures for the power-loss tests: a traced work dir and a way to run code in it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from harness.powerloss.build import compiler
from harness.powerloss.journal import read_journal
from harness.powerloss.rebuild import arm

needs_cc = pytest.mark.skipif(compiler() is None,
                              reason="no C compiler: power-loss faults are refused (exit 2) instead")


class Traced:
    def __init__(self, tmp_path) -> None:
        self.root = os.path.realpath(str(tmp_path / "work"))
        os.makedirs(self.root, exist_ok=True)
        self.journal = str(tmp_path / "journal.bin")
        self.env = None

    def arm(self):
        self.env = arm(self.root, self.journal)
        return self.env

    def environ(self):
        if self.env is None:
            self.arm()
        e = dict(os.environ)
        e.update(self.env)
        e["PYTHONPATH"] = os.pathsep.join([os.getcwd()] + sys.path)
        return e

    def run(self, code: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=self.environ(),
                              cwd=self.root, capture_output=True, text=True, timeout=120, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"traced child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def records(self):
        return read_journal(self.journal)

    def p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)


@pytest.fixture
def traced(tmp_path):
    return Traced(tmp_path)
