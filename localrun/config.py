"""The configuration file, ``<config dir>/config.toml`` (``LOCALRUN_HOME/config`` when set).

Settings layer as the house style says: defaults < this file < ``LOCALRUN_*`` environment
variables < command-line flags. The file is TOML, read once a process::

    [prompt_cache]
    max = "2G"        # LOCALRUN_PROMPT_CACHE_MAX
"""

from __future__ import annotations

import os
import sys
from functools import cache
from typing import Any

from localrun import paths
from localrun.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]


def path() -> Any:
    return paths.config_dir() / "config.toml"


@cache
def _file() -> dict[str, Any]:
    file = path()
    try:
        with file.open("rb") as f:
            data: dict[str, Any] = tomllib.load(f)
            return data
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise UsageError(f"cannot read {file}: {e.strerror}", "check its permissions") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{file} is not valid TOML: {e}", "fix the file, or remove it") from None


def setting(section: str, key: str, env: str) -> str | None:
    """The setting's text: the environment variable ``env`` if set, else ``[section] key``
    in the configuration file, else None."""
    if env in os.environ:
        return os.environ[env]
    table = _file().get(section, {})
    if not isinstance(table, dict):
        raise UsageError(f"{path()}: {section} must be a [{section}] table", f"write [{section}]")
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UsageError(
            f"{path()}: [{section}] {key} must be a number or a string, not {value!r}",
            f'write it like {key} = "2G"',
        )
    return str(value)


_UNITS = {"K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def size(section: str, key: str, env: str, what: str) -> int | None:
    """A setting that is a size: bytes, or a number with K, M, G or T (a trailing B allowed,
    as in 2GB); None where it is not set. ``what`` names it in the error for another text."""
    text = (setting(section, key, env) or "").strip()
    if not text:
        return None
    number, unit = text.upper().rstrip("B"), 1
    if number and number[-1] in _UNITS:
        number, unit = number[:-1], _UNITS[number[-1]]
    try:
        value = int(float(number) * unit)
    except (ValueError, OverflowError):  # "lots", "inf"
        value = -1
    if value < 0:
        raise UsageError(
            f"{what} {text!r} ({env}, or [{section}] {key} in the configuration file) "
            "is not a size",
            "give bytes, or a number with K, M or G (e.g. 2G)",
        )
    return value


def reload() -> None:
    """Read the file again (tests; a long-running server after an edit)."""
    _file.cache_clear()
