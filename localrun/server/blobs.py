"""Ollama's uploads: ``HEAD`` and ``POST /api/blobs/sha256:HEX``, and the ``files``,
``adapters`` and ``draft_files`` of ``/api/create`` that name them.

A blob is streamed to a file of its own beside the store's blobs, hashed as it arrives, and
renamed into place only once its sha256 is the one its address names; a mismatch (400), a
client gone or a full disk leaves nothing behind. Its size is bounded by the free disk under
the store, not by ``--max-body`` (a model's weights are gigabytes): refused at once when its
Content-Length says so, else when it passes the bound. Ollama answers 201 when it stored the
blob, 200 when it had it already (the body unread), as here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from starlette.requests import ClientDisconnect, Request

from localrun.errors import InvalidModelError, ModelNotFoundError, UsageError, from_os_error
from localrun.hub import store

log = logging.getLogger("localrun.server")
# Received bytes are written (and hashed) in a worker thread in pieces this large: the event
# loop never waits on the disk, and an upload holds at most this much in memory.
FLUSH_BYTES = 8 * 1024 * 1024


def exists(digest: str) -> bool:
    """Whether the blob ``digest`` is here (400 for a digest that is not sha256:HEX)."""
    return store.upload_path(digest).is_file()


def require(digest: str) -> None:
    """A 404 naming the blob ``digest`` if it is not here (HEAD's answer)."""
    if not exists(digest):
        raise ModelNotFoundError(
            f"blob {digest} not found", f"upload the file first: POST /api/blobs/{digest}"
        )


async def receive(request: Request, digest: str) -> bool | None:
    """Store the request's body as the blob ``digest``: True when stored, False if it was here
    already, None when the client went away before the end (nothing is kept)."""
    if await asyncio.to_thread(exists, digest):
        return False
    room = await asyncio.to_thread(store.upload_room)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > room:
        raise store.too_large(int(length), room)  # refused before a byte is read
    upload = await asyncio.to_thread(store.BlobUpload, digest, room)
    try:
        pending = bytearray()
        async for chunk in request.stream():  # a client gone raises ClientDisconnect
            pending += chunk
            if len(pending) >= FLUSH_BYTES:
                await asyncio.to_thread(upload.write, bytes(pending))
                pending.clear()
        await asyncio.to_thread(upload.write, bytes(pending))
        await asyncio.to_thread(upload.finish)
    except ClientDisconnect:  # not the server's fault: no 500, no traceback
        log.info("upload of %s stopped after %d bytes: the client went away", digest, upload.size)
        return None
    except OSError as e:  # a full disk is a 507 that says so
        raise from_os_error(e, during=f" while receiving {digest}") or e from None
    finally:
        upload.close()  # nothing half-written stays (it waits for a write in progress)
    return True


@dataclass
class Uploads:
    """The uploaded files a create request names, checked and linked under their names."""

    weights: Path | None = None
    projector: Path | None = None
    adapters: list[Path] = field(default_factory=list)
    draft: Path | None = None

    @property
    def links(self) -> set[Path]:
        named = [self.weights, self.projector, *self.adapters, self.draft]
        return {p for p in named if p is not None}


def _digests(body: dict[str, Any], key: str) -> dict[str, str]:
    """A request's map of file names to digests, each name a relative path and each digest
    one a blob here has."""
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise UsageError(
            f"'{key}' must be an object of file names and digests",
            f'send "{key}": {{"model.gguf": "sha256:..."}}',
        )
    for name, digest in value.items():
        parts = name.split("/")
        if PurePosixPath(name).is_absolute() or any(p in ("", ".", "..") for p in parts):
            raise UsageError(
                f"'{key}' names the file {name[:80]!r}: file path must be relative",
                "name each file as it was uploaded, such as model.gguf",
            )
        if any(ord(c) < 32 for c in name) or len(parts[-1].encode()) > store.MAX_NAME_BYTES:
            raise UsageError(
                f"'{key}' names the file {name[:80]!r}: not a file name",
                "name each file as it was uploaded, such as model.gguf",
            )
        if not exists(digest):  # a 400, as what is not sha256:HEX: the request is wrong
            raise UsageError(
                f"blob {digest} not found", f"upload the file first: POST /api/blobs/{digest}"
            )
    return dict(value)


def _gguf(name: str, digest: str) -> tuple[Path, dict[str, Any], str]:
    """The uploaded file, its GGUF metadata and architecture: a 400 for one that is not GGUF."""
    from localrun.gguf.reader import read_gguf

    if name.lower().endswith(".safetensors"):
        raise UsageError(
            f"{name} is safetensors: localrun runs GGUF files",
            "convert it with llama.cpp's convert_hf_to_gguf.py, then create from the .gguf",
        )
    path = store.upload_path(digest)
    try:
        info = read_gguf(path)
    except InvalidModelError:
        raise UsageError(
            f"{name} ({digest}) is not a GGUF file", "upload a .gguf model file"
        ) from None
    return path, info.metadata, info.architecture


def _single(name: str, metadata: dict[str, Any]) -> None:
    parts = int(metadata.get("split.count") or 1)
    if parts > 1:
        raise UsageError(
            f"{name} is one of the {parts} parts of a split model: a created model is one file",
            "merge the parts with llama.cpp's llama-gguf-split --merge, and upload that file",
        )


def uploads_of(body: dict[str, Any]) -> Uploads:
    """The files of a create request, each checked and linked for the model (nothing is
    linked when one is refused). Run in a worker thread."""
    files, adapters = _digests(body, "files"), _digests(body, "adapters")
    drafts = _digests(body, "draft_files")
    made = Uploads()
    chosen: list[tuple[str, str, str]] = []  # (what, file name, digest)
    for name, digest in sorted(files.items()):
        _, metadata, architecture = _gguf(name, digest)
        if architecture == "clip":  # a vision model's projector, as Ollama reads it
            if any(what == "projector" for what, _, _ in chosen):
                raise UsageError("'files' names two projectors", "send one mmproj GGUF")
            chosen.append(("projector", name, digest))
            continue
        _single(name, metadata)
        if metadata.get("general.type") == "adapter":
            raise UsageError(f"{name} is a LoRA adapter", "name it in 'adapters', not 'files'")
        if any(what == "weights" for what, _, _ in chosen):
            raise UsageError(
                "'files' names two models", "send one GGUF of weights (and one projector)"
            )
        chosen.append(("weights", name, digest))
    if files and not any(what == "weights" for what, _, _ in chosen):
        raise UsageError("'files' names a projector but no model", "add the model's GGUF")
    for name, digest in sorted(adapters.items()):
        _, metadata, _ = _gguf(name, digest)
        if metadata.get("general.type") != "adapter":  # as llama.cpp's converter marks one
            raise UsageError(f"{name} is not a LoRA adapter", "upload a LoRA adapter in GGUF")
        chosen.append(("adapter", name, digest))
    if len(drafts) > 1:
        raise UsageError("'draft_files' names more than one file", "send the draft model's GGUF")
    for name, digest in drafts.items():
        _single(name, _gguf(name, digest)[1])
        chosen.append(("draft", name, digest))
    for what, name, digest in chosen:
        link = store.name_upload(digest, PurePosixPath(name).name)
        if what == "adapter":
            made.adapters.append(link)
        else:
            setattr(made, what, link)
    return made
