"""One resolver of `module:attr` specs (store factories, protocol variants).

`resolve(spec, what)` imports `module` and walks the dotted `attr`; every
error is a `ResolveError` (a ValueError: bad input) that names `what`, the
spec and the cause: not of the form, module not found, a module it needs not
installed, the import raising, an attribute missing.
"""

from __future__ import annotations

import importlib
from typing import Any, Optional


class ResolveError(ValueError):
    """A `module:attr` spec that cannot be resolved; the message says why."""


def resolve(spec: Any, what: str = "object", *, example: Optional[str] = None) -> Any:
    """`module:attr` (attr may be dotted) to the object it names."""
    if not isinstance(spec, str) or ":" not in spec:
        hint = f" (for example {example})" if example else ""
        raise ResolveError(f"{what} {spec!r} is not of the form module:attr{hint}")
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ResolveError(f"{what} {spec!r} is not of the form module:attr")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and (e.name == mod_name or mod_name.startswith(e.name + ".")):
            raise ResolveError(f"{what} {spec!r}: module {mod_name!r} not found") from e
        raise ResolveError(f"{what} {spec!r}: importing module {mod_name!r} failed: it needs module "
                           f"{e.name!r}, which is not installed") from e
    except (Exception, SystemExit) as e:  # a module raising at import is bad input
        raise ResolveError(f"{what} {spec!r}: importing module {mod_name!r} raised {type(e).__name__}: {e}") from e
    obj: Any = mod
    walked = mod_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ResolveError(f"{what} {spec!r}: attribute {attr!r} missing ({walked!r} has no attribute {part!r})")
        obj = getattr(obj, part)
        walked = f"{walked}.{part}"
    return obj
