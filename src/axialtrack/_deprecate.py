"""Keyword arguments under a former name: accepted with a ``DeprecationWarning``
until the callers are swept (then this module goes)."""

from __future__ import annotations

import warnings

__all__ = ["renamed_keyword"]


def renamed_keyword(
    old: str, new: str, value: str, current: str, default: str, stacklevel: int = 3
) -> str:
    """The value given as ``old=value`` for the keyword now named ``new``.

    Warns (``DeprecationWarning``, naming both keywords); ``current`` is what
    ``new`` holds, and a ``current`` other than ``default`` and ``value`` means
    both names were given different values: a ``TypeError``.
    """
    if current not in (default, value):
        raise TypeError(
            f"{new}={current!r} and {old}={value!r} both given; pass {new}= only"
        )
    warnings.warn(
        f"{old}= is deprecated; pass {new}={value!r}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    return value
