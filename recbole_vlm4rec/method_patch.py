"""How compat.py and compat_distributed.py put a method of their own in RecBole's place: once,
keeping RecBole's method within reach (the shim's ``_original``, which tests compare against)."""

from __future__ import annotations

import functools
from typing import Any, Callable

SHIM_MARK = "_vlm4rec_shim"


def replaces(owner: type, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``owner.<name>`` becomes a method that calls the decorated function with
    RecBole's method first, ``replacement(original, self, ...)`` (which may or may not call it).

    The installed method carries ``_vlm4rec_shim`` and ``_original``; when ``owner.<name>``
    already carries the mark (an earlier install), nothing changes: installing twice is safe.
    """
    def install(replacement: Callable[..., Any]) -> Callable[..., Any]:
        original = getattr(owner, name)
        if getattr(original, SHIM_MARK, False):
            return original

        @functools.wraps(original)
        def method(*args: Any, **kwargs: Any) -> Any:
            return replacement(original, *args, **kwargs)

        setattr(method, SHIM_MARK, True)
        method._original = original  # type: ignore[attr-defined]
        setattr(owner, name, method)
        return method

    return install
