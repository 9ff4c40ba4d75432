"""One exit-code policy for every `python -m harness` command.

0  AS_EXPECTED   everything as expected
1  UNEXPECTED    the system under test did something unexpected (a violation,
                 or a known-bad configuration that was not caught)
2  USAGE         usage or bad input (scenario file, CLI option, import path)
3  HARNESS       the harness or its environment could not finish: an I/O
                 error, a full disk, an internal bug, an interruption, or an
                 inconclusive run (planned faults that did not land)

Raise `UsageError` for bad input and `HarnessError` for the harness's own
failures; the CLI maps them to 2 and 3 and prints the message, which must name
the path, key or value at fault.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    AS_EXPECTED = 0
    UNEXPECTED = 1
    USAGE = 2
    HARNESS = 3


class UsageError(ValueError):
    """Bad input: the message names the file, key, option or value at fault."""


class HarnessError(RuntimeError):
    """The harness or its environment could not finish (not the system under test)."""
