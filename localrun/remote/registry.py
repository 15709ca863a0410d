"""Registered remote engines: ``localrun remote add NAME URL``, kept in ``remotes.json``."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from localrun import paths
from localrun.errors import LocalrunError, UsageError
from localrun.files import write_atomic

FILE = "remotes.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# A host name (letters of any script, digits, dots, hyphens) or an IPv6 address, as the HTTP
# library takes it later: spaces and other characters would fail only at the first request.
_HOST = re.compile(r"[\w.-]+|[0-9a-f:.]+(%[\w.-]+)?")


@dataclass(frozen=True)
class Remote:
    """An OpenAI-compatible endpoint and the model to ask it for."""

    name: str
    url: str  # the API's base, ending in /v1
    model: str  # the model id the endpoint knows
    api_key_env: str | None = None  # the environment variable that holds its key


def base_url(url: str) -> str:
    """The OpenAI API base of ``url`` (``http://host:port`` gets ``/v1``); refused unless it
    is an http(s) URL with a host, and a port (if any) from 1 to 65535."""
    hint = "give the server's URL, such as http://host:8000"
    try:
        parts = urlsplit(url.strip())
    except ValueError as e:  # a broken [IPv6] host
        raise UsageError(f"{url!r} is not a valid URL ({e})", hint) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{url!r} is not an http(s) URL", hint)
    try:
        port = parts.port  # urllib's own check: digits, at most 65535
    except ValueError:
        port = 0
    if port == 0:
        raise UsageError(f"{url!r} has no valid port: a port is a number from 1 to 65535", hint)
    if not _HOST.fullmatch(parts.hostname):
        raise UsageError(f"{url!r} has no valid host name ({parts.hostname!r})", hint)
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return f"{parts.scheme}://{parts.netloc}{path}"


def _file() -> Path:
    return paths.config_dir() / FILE


def remotes() -> dict[str, Remote]:
    """The registered remotes, by name."""
    path = _file()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {r["name"]: Remote(**r) for r in data["remotes"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LocalrunError(
            f"{path} is not a list of remotes ({type(e).__name__})",
            "fix or delete it, then add the remotes again",
        ) from None


def find(name: str) -> Remote | None:
    return remotes().get(name)


def add(name: str, url: str, model: str | None, api_key_env: str | None) -> Remote:
    """Register ``name``; its model id is ``model``, else the name itself."""
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"{name!r} is not a valid remote name", "use 1-64 letters, digits and ._:-"
        )
    if api_key_env is not None and not _ENV.fullmatch(api_key_env):
        raise UsageError(
            f"{api_key_env!r} is not an environment variable's name", "such as VLLM_API_KEY"
        )
    remote = Remote(name, base_url(url), model or name, api_key_env)
    known = remotes()
    known[name] = remote
    _save(known)
    return remote


def remove(name: str) -> None:
    known = remotes()
    if name not in known:
        raise UsageError(f"no remote called {name!r}", "see them with: localrun remote list")
    del known[name]
    _save(known)


def _save(known: dict[str, Remote]) -> None:
    path = _file()
    paths.ensure_dir(path.parent)
    data = {"remotes": [asdict(r) for r in sorted(known.values(), key=lambda r: r.name)]}
    try:
        write_atomic(path, json.dumps(data, indent=2) + "\n")
    except OSError as e:
        raise LocalrunError(f"cannot write {path}: {e.strerror}", "make it writable") from None
