"""Where localrun keeps its files.

Every location comes from platformdirs and can be moved as a whole with the
``LOCALRUN_HOME`` environment variable (tests point it at a temporary directory).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "localrun"


def _home() -> Path | None:
    value = os.environ.get("LOCALRUN_HOME")
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """Directory for downloaded and assembled models (large, re-creatable)."""
    home = _home()
    return home / "cache" if home else Path(platformdirs.user_cache_dir(APP_NAME))


def data_dir() -> Path:
    """Directory for user data that cannot be re-created (chat history, created models)."""
    home = _home()
    return home / "data" if home else Path(platformdirs.user_data_dir(APP_NAME))


def config_dir() -> Path:
    """Directory for the configuration file."""
    home = _home()
    return home / "config" if home else Path(platformdirs.user_config_dir(APP_NAME))


def ensure_dir(folder: Path) -> Path:
    """Create ``folder`` (and its parents), or say which directory cannot be written."""
    from localrun.errors import CacheError

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheError(
            f"cannot write to the directory {folder}: {e.strerror}",
            "make it writable, or set LOCALRUN_HOME to a writable directory",
        ) from None
    return folder
