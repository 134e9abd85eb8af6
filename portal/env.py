"""Typed readers for settings that come from the environment.

Every reader raises ImproperlyConfigured naming the variable, the bad value and what was
expected, so a typo in a deployment fails at start-up with a message an operator can act
on, not later as a confusing TypeError deep inside a request.

An unset variable and one set to an empty (or all-blank) string both mean "use the
default": compose files and systemd units often write ``FOO=`` to mean "not set".
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Collection
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def _bad(name: str, value: str, expected: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"{name}={value!r} is invalid: expected {expected}.")


def get_bool(name: str, default: bool) -> bool:
    raw = _raw(name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _bad(name, raw, "a boolean (true/false, yes/no, on/off, 1/0)")


def get_int(name: str, default: int, *, min: int | None = None) -> int:
    raw = _raw(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or (min is not None and value < min):
        bound = f" >= {min}" if min is not None else ""
        raise _bad(name, raw, f"an integer{bound}")
    return value


def get_float(name: str, default: float, *, gt: float | None = None) -> float:
    raw = _raw(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    # nan and inf parse as floats but are never a meaningful setting.
    if not math.isfinite(value) or (gt is not None and value <= gt):
        bound = f" > {gt:g}" if gt is not None else ""
        raise _bad(name, raw, f"a finite number{bound}")
    return value


def get_str(
    name: str,
    default: str,
    *,
    choices: Collection[str] | None = None,
    pattern: str | None = None,
    expected: str | None = None,
) -> str:
    """Return the variable as a string, optionally checked against choices or a regex.

    ``expected`` describes valid values in the error message when a pattern is used.
    """
    raw = _raw(name)
    if raw is None:
        return default
    if choices is not None and raw not in choices:
        raise _bad(name, raw, expected or "one of " + ", ".join(sorted(choices)))
    if pattern is not None and not re.fullmatch(pattern, raw):
        raise _bad(name, raw, expected or f"a value matching {pattern}")
    return raw


def get_optional_str(name: str) -> str | None:
    """Return the variable, or None when it is unset or blank."""
    return _raw(name)


def get_list(name: str, default: list[str]) -> list[str]:
    """Comma-separated list; blank items are dropped, but an all-blank list is an error."""
    raw = _raw(name)
    if raw is None:
        return list(default)
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if not items:
        raise _bad(name, raw, "a comma-separated list with at least one item")
    return items


def get_networks(
    name: str, default: list[str]
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Comma-separated IP networks in CIDR notation (a bare address is a /32 or /128)."""
    networks = []
    for item in get_list(name, default):
        try:
            # strict: "10.0.0.5/8" is refused rather than silently read as 10.0.0.0/8.
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError:
            raise _bad(
                name,
                _raw(name) or item,
                f"comma-separated networks such as 10.0.0.0/8 or fd00::/8 ({item!r} is not one)",
            ) from None
    return networks


def get_paths(name: str, default: list[Path]) -> list[Path]:
    """Colon-separated list of directories (like PATH), resolved to absolute paths."""
    raw = _raw(name)
    if raw is None:
        return [Path(p).expanduser().resolve() for p in default]
    parts = [part.strip() for part in raw.split(os.pathsep) if part.strip()]
    if not parts:
        raise _bad(name, raw, f"a {os.pathsep!r}-separated list with at least one path")
    if any("\0" in part for part in parts):
        raise _bad(name, raw, "paths without NUL bytes")
    return [Path(part).expanduser().resolve() for part in parts]


def get_path(name: str, default: Path) -> Path:
    """A single path, resolved to an absolute path."""
    raw = _raw(name)
    if raw is None:
        return Path(default).expanduser().resolve()
    if "\0" in raw:
        raise _bad(name, raw, "a path without NUL bytes")
    return Path(raw).expanduser().resolve()
