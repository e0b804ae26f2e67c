"""Enums chosen by name: the one coercion of "a member or its value" and a string enum base.

:func:`coerce` turns a user's choice (an enum member, or its value as a CLI flag, a keyword
argument or a file's metadata gives it) into the member; anything else is an error naming the
setting and listing the allowed values, ``"<name> must be one of a, b, c; got 'x'"``.
:class:`StrEnum` is an enum whose members are their value strings wherever a string is used.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TypeVar

E = TypeVar("E", bound=enum.Enum)


class StrEnum(str, enum.Enum):
    """An enum of strings whose members behave as their values: ``m == "value"``, hashing,
    ``str(m)``, f-strings and ``json.dumps`` all give the value (``enum.StrEnum`` of Python
    3.11, also on 3.10). So settings held as members print, compare and serialize exactly as
    the plain strings they replace; ``repr`` still names the member."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)


def coerce(
    value,
    enum_cls: type[E],
    name: str,
    *,
    allowed: Iterable[str] | None = None,
    error: type[Exception] = ValueError,
) -> E:
    """``value`` as a member of ``enum_cls``: a member, or a member's value. Anything else
    raises ``error`` (a ValueError by default) with the message
    ``f"{name} must be one of {', '.join(allowed)}; got {value!r}"``.

    ``allowed`` are the values the caller accepts, in the order the message lists them
    (default: every member's value). Members whose value is not in it are rejected too; a
    listed value that is no member (e.g. ``"auto"``, resolved by the caller before) is only
    listed."""
    listed = enum_values(enum_cls) if allowed is None else tuple(allowed)
    try:
        member = enum_cls(value)
    except ValueError:
        member = None
    if member is None or member.value not in listed:
        raise error(f"{name} must be one of {', '.join(listed)}; got {value!r}") from None
    return member


def enum_values(enum_cls: type[enum.Enum]) -> tuple:
    """The values of ``enum_cls``'s members, in definition order (e.g. a CLI's choices)."""
    return tuple(m.value for m in enum_cls)
