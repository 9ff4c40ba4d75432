"""Protocol variants: named patches applied to the reference at process start.

The harness proves it catches known protocol bugs by running deliberately
broken variants of this reference (the bug zoo, kept in the test suite). A
variant is `package.module:name`, a callable returning a list of
`(owner, attribute, replacement)` patches. Processes apply the variant named
in the environment variable `DFH_VARIANT`; the simulation engine applies and
undoes it in-process. Unset, nothing is patched and nothing is imported.
"""

from __future__ import annotations

import os
from typing import Callable, List, Tuple

from .resolve import resolve

ENV_VAR = "DFH_VARIANT"


def load_variant(spec: str) -> List[Tuple[object, str, object]]:
    """The patches of variant `package.module:name` (a callable returning them)."""
    fn = resolve(spec, "variant")
    if not callable(fn):
        raise ValueError(f"variant {spec!r}: {spec.partition(':')[0]} has no callable {spec.partition(':')[2]!r}")
    return list(fn())


def apply_variant(spec: str) -> Callable[[], None]:
    """Apply the patches; returns a function that undoes them."""
    patches = load_variant(spec)
    saved = [(owner, name, owner.__dict__.get(name, _MISSING) if isinstance(owner, type) else getattr(owner, name))
             for owner, name, _ in patches]
    for owner, name, new in patches:
        setattr(owner, name, new)

    def undo() -> None:
        for owner, name, old in reversed(saved):
            if old is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, old)

    return undo


def apply_from_env() -> None:
    spec = os.environ.get(ENV_VAR)
    if spec:
        apply_variant(spec)


_MISSING = object()
