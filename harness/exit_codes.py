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


def describe_os_error(e: OSError) -> str:
    """An OSError as one line that names the path(s) it concerns."""
    text = e.strerror or str(e)
    if e.filename is not None:
        text += f": {e.filename}"
        if getattr(e, "filename2", None) is not None:
            text += f" -> {e.filename2}"
    return text


def guarded(fn, *args) -> int:
    """Run a command's body under the exit-code policy; returns the exit code.

    UsageError (and reference_impl's ConfigError, a bad run configuration) -> 2;
    HarnessError, OSError (naming the path), an internal bug (traceback first)
    and KeyboardInterrupt -> 3. No bare ValueError is taken for bad usage:
    one that escapes is a bug in the harness.
    """
    import sys

    from reference_impl.config import ConfigError

    try:
        return int(fn(*args))
    except (UsageError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.USAGE
    except HarnessError as e:
        print(f"harness error: {e}", file=sys.stderr)
        return ExitCode.HARNESS
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.HARNESS
    except OSError as e:
        print(f"harness error: {describe_os_error(e)}", file=sys.stderr)
        return ExitCode.HARNESS
    except Exception as e:  # a bug in the harness: say so, with the traceback
        import traceback

        traceback.print_exc()
        print(f"harness error: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return ExitCode.HARNESS
