"""Paths given on the command line, checked before any work starts.

An output directory or file that cannot be created or written is bad input
(`UsageError`, exit 2) said up front, not an OSError after minutes of work.
An input JSON file that is missing, not UTF-8 or not JSON is bad input too,
and the message names the file.
"""

from __future__ import annotations

import os
from typing import Any

from reference_impl.config import read_json_file as _read_json_file

from .exit_codes import UsageError


def _nearest_existing(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def check_output_dir(path: str, option: str, named: str = "") -> None:
    """`path` is a writable directory, or can be created as one (`named`: the path the user gave)."""
    named = named or path
    if not path:
        raise UsageError(f"{option}: an empty path")
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise UsageError(f"{option} {named}: {path} exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{option} {named}: directory {path} is not writable")
        return
    anc = _nearest_existing(path)
    if not os.path.isdir(anc):
        raise UsageError(f"{option} {named}: cannot be created: {anc} is not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {named}: cannot be created: {anc} is not writable")


def check_output_file(path: str, option: str) -> None:
    """`path` is a writable file, or can be created (its directory too)."""
    if not path:
        raise UsageError(f"{option}: an empty path")
    if os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a directory, a file was expected")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise UsageError(f"{option} {path}: file not writable")
        return
    check_output_dir(os.path.dirname(os.path.abspath(path)), option, named=path)


def read_json_file(path: str, what: str = "JSON") -> Any:
    """Load a JSON input file; every failure is a usage error that names the file."""
    return _read_json_file(path, what, UsageError)
