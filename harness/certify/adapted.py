"""`harness.certify.adapted:one_by_one_<token>`: an older store behind the adapter.

Tier 4 runs the reference producer and consumer in their own processes, which
open the backend by its `module:attr` string. For a store with only
`commit_sample`, certification passes them this module's attribute instead:
the token is the base32 of the store's own `module:attr`, and the attribute
is a factory taking a working directory that returns the store wrapped in
`OneByOneAdapter`.
"""

from __future__ import annotations

import base64
from typing import Any, Callable

from .loader import OneByOneAdapter, classify, resolve

_PREFIX = "one_by_one_"


def __getattr__(name: str) -> Callable[[str], Any]:
    if not name.startswith(_PREFIX):
        raise AttributeError(name)
    token = name[len(_PREFIX):].upper()
    try:
        spec = base64.b32decode(token + "=" * (-len(token) % 8)).decode()
    except Exception as e:  # noqa: BLE001
        raise AttributeError(name) from e
    target = classify(resolve(spec), spec=spec)

    def factory(workdir: str) -> Any:
        store = target.open_raw(workdir)
        if callable(getattr(store, "commit_samples", None)):
            return store
        return OneByOneAdapter(store)

    factory.__name__ = name
    return factory
