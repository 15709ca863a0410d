"""What the server says about models: the list, one model's details, the loaded ones.

Read from the store, the recipes and each GGUF's header, for both APIs (``/api/tags`` and
``/v1/models``, ``/api/show``, ``/api/ps``). These functions read files: call them in a
worker thread.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localrun.files import human_count
from localrun.gguf.reader import GGUFInfo, file_type_name, read_gguf

# Metadata keys too large to send whole: the tokenizer's vocabulary and merges.
_BULKY = (
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.scores",
    "tokenizer.chat_template",
)


def timestamp(seconds: float) -> str:
    """RFC 3339 in UTC, as Ollama writes its times."""
    when = dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)
    return when.isoformat().replace("+00:00", "Z")


def details(info: GGUFInfo, parent: str = "") -> dict[str, Any]:
    """Ollama's ``details`` of a model."""
    file_type = info.metadata.get("general.file_type")
    return {
        "parent_model": parent,
        "format": "gguf",
        "family": info.architecture,
        "families": [info.architecture],
        "parameter_size": human_count(info.parameters),
        "quantization_level": file_type_name(int(file_type)) if file_type is not None else "",
    }


@dataclass(frozen=True)
class Listed:
    """A model the server can run, as listed."""

    name: str
    path: Path
    size: int
    digest: str
    modified: float
    parent: str = ""


def listed() -> list[Listed]:
    """The models here that can run, as ``localrun list`` has them (localrun.models.catalog)."""
    from localrun.models import catalog

    return [
        Listed(e.name, e.path, e.size, e.digest, e.modified, e.parent)
        for e in catalog.entries()
        if e.path is not None and e.problem is None
    ]


def tags() -> list[dict[str, Any]]:
    """``/api/tags``: every model with its details."""
    models = []
    for m in listed():
        try:
            info = read_gguf(m.path)
        except Exception:  # a file gone bad since it was listed: list it without details
            info = None
        models.append(
            {
                "name": m.name,
                "model": m.name,
                "modified_at": timestamp(m.modified),
                "size": m.size,
                "digest": m.digest,
                "details": details(info, m.parent) if info else {},
            }
        )
    return models


def show(name: str) -> dict[str, Any]:
    """``/api/show``: the Modelfile, parameters, template, details and metadata."""
    from localrun.models.facts import (
        capabilities,
        chat_template,
        modelfile_of,
        pooling_of,
        projector_facts,
    )
    from localrun.server.pool import resolve_served

    resolved = resolve_served(name)
    info = read_gguf(resolved.path)
    mf = modelfile_of(resolved.name)
    parameters = [f"{k:<16} {v}" for k, v in mf.parameters.items()]
    parameters += [f'{"stop":<16} "{s}"' for s in mf.stop]
    model_info = {
        k: v for k, v in info.metadata.items() if k not in _BULKY and not isinstance(v, list)
    }
    model_info["general.parameter_count"] = info.parameters
    projector = projector_facts(resolved.settings.projector)
    able = capabilities(chat_template(resolved, info.metadata), projector, pooling_of(info))
    return {
        "modelfile": mf.to_text(),
        "parameters": "\n".join(parameters),
        "template": mf.template or "",
        "system": mf.system or "",
        "license": "\n".join(mf.license),
        "details": details(info),
        "model_info": model_info,
        "capabilities": list(able),
        "modified_at": timestamp(resolved.path.stat().st_mtime),
    }
