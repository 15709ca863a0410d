"""Model management over HTTP, as Ollama's clients call it: pull, delete, copy, create, and
the uploads create uses (``/api/blobs``, in :mod:`localrun.server.blobs`).

Off on an address other than loopback unless the server was started with ``--allow-admin``.
Every name is checked as the CLI checks it, a ``from`` must name a model (never a file: a
client's files come as uploads), and nothing is written outside localrun's own store.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from localrun.errors import (
    ForbiddenError,
    LocalrunError,
    ModelNotFoundError,
    UsageError,
)
from localrun.server import blobs, fields
from localrun.server.config import ServeConfig
from localrun.server.guard import error_body
from localrun.server.pool import ModelPool, resolve_served

NDJSON = "application/x-ndjson"


class _Cancelled(Exception):
    """The client that asked for a pull went away: stop downloading."""


class _Progress:
    """A pull's progress (``hub.pull.Reporter``) as Ollama's progress objects, on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.cancelled = False
        self.file = ""
        self.total = self.done = 0
        self.shown = 0.0

    def _put(self, item: dict[str, Any] | None) -> None:
        if self.cancelled:
            raise _Cancelled
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def note(self, text: str) -> None:
        self._put({"status": text})

    def start_file(self, name: str, total: int, done: int) -> None:
        self.file, self.total, self.done = name, total, done
        self._put({"status": f"pulling {name}", "digest": name, "total": total, "completed": done})

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.shown >= 0.1:  # ten lines a second at most
            self.shown = now
            self._put({"status": f"pulling {self.file}", "digest": self.file,
                       "total": self.total, "completed": self.done})  # fmt: skip
        elif self.cancelled:
            raise _Cancelled

    def end_file(self) -> None:
        self._put({"status": f"pulling {self.file}", "digest": self.file,
                   "total": self.total, "completed": self.total})  # fmt: skip


def _lines(items: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(i).encode() + b"\n" for i in items)


class AdminAPI:
    """The management handlers; each refuses when the server's settings do."""

    def __init__(self, pool: ModelPool, config: ServeConfig) -> None:
        self.pool = pool
        self.config = config

    def routes(self) -> list[Route]:
        return [
            Route("/api/pull", self.pull, methods=["POST"]),
            Route("/api/delete", self.delete, methods=["DELETE"]),
            Route("/api/copy", self.copy, methods=["POST"]),
            Route("/api/create", self.create, methods=["POST"]),
            Route("/api/blobs/{digest}", self.blob, methods=["HEAD", "POST"]),
        ]

    def _allowed(self) -> None:
        if not self.config.admin:
            raise ForbiddenError(
                "model management (pull, delete, copy, create, blobs) is off on this address",
                "run it on the server's machine, or start the server with --allow-admin",
            )

    async def pull(self, request: Request) -> Response:
        from localrun.hub.pull import pull as pull_model
        from localrun.models.resolve import hub_ref_for
        from localrun.models.updates import pull_from_registry, registry_target

        self._allowed()
        body = await fields.read_body(request)
        name = fields.model_name(body)
        # A registry name (ollama.com/library/NAME, or NAME not in the library) pulls from the
        # registry; everything else from the Hub.
        target = await asyncio.to_thread(registry_target, name)
        ref = name if target is not None else await asyncio.to_thread(hub_ref_for, name)
        progress = _Progress(asyncio.get_running_loop())

        def work() -> None:
            try:
                if target is not None:
                    pull_from_registry(*target, reporter=progress)
                else:
                    pull_model(ref, reporter=progress)
            finally:
                progress.loop.call_soon_threadsafe(progress.queue.put_nowait, None)

        task = asyncio.ensure_future(asyncio.to_thread(work))
        # A pull stopped for a client that left ends with _Cancelled, which nobody reads.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

        async def updates() -> AsyncIterator[dict[str, Any]]:
            yield {"status": "pulling manifest"}
            while (item := await progress.queue.get()) is not None:
                yield item
            await task  # raises what the pull raised
            yield {"status": "verifying sha256 digest"}
            yield {"status": "writing manifest"}
            yield {"status": "success"}

        if fields.get(body, "stream", bool, True):

            async def stream() -> AsyncIterator[bytes]:
                try:
                    async for item in updates():
                        yield _lines([item])
                except LocalrunError as e:
                    yield _lines([error_body(request.url.path, e)])
                finally:
                    progress.cancelled = True  # a client gone mid-pull stops it

            return StreamingResponse(stream(), media_type=NDJSON)
        try:
            items = [item async for item in updates()]
        finally:
            progress.cancelled = True
        return JSONResponse(items[-1])

    async def delete(self, request: Request) -> Response:
        from localrun.hub import store
        from localrun.models import catalog

        self._allowed()
        body = await fields.read_body(request)
        asked = fields.model_name(body)
        store.validate_name(asked)
        entry = await asyncio.to_thread(catalog.require, asked)  # a 404 when it is not here
        await self.pool.unload(entry.name)  # runners go by the model's own name
        await asyncio.to_thread(catalog.remove, entry.name)
        return Response(status_code=200)

    async def copy(self, request: Request) -> Response:
        from localrun.models import catalog

        self._allowed()
        body = await fields.read_body(request)
        source = fields.model_name(body, "source")
        destination = fields.model_name(body, "destination")
        await asyncio.to_thread(catalog.copy, source, destination)
        return Response(status_code=200)

    async def blob(self, request: Request) -> Response:
        """Ollama's HEAD (200 or 404) and POST (201 stored, 200 here already) of a blob."""
        self._allowed()
        digest = request.path_params["digest"]
        if request.method == "HEAD":
            await asyncio.to_thread(blobs.require, digest)
            return Response(status_code=200)
        stored = await blobs.receive(request, digest)
        # A client gone mid-upload reads no answer; its log line says so.
        return Response(status_code={True: 201, False: 200, None: 400}[stored])

    async def create(self, request: Request) -> Response:
        self._allowed()
        body = await fields.read_body(request)
        name = fields.model_name(body)
        for unsupported in ("remote_host", "renderer", "parser", "requires", "info",
                            "draft_quantize"):  # fmt: skip
            if body.get(unsupported):
                raise UsageError(
                    f"'{unsupported}' is not supported by localrun's create",
                    f"send the request without '{unsupported}'",
                )
        quantize = fields.get(body, "quantize", str)
        uploads = await asyncio.to_thread(blobs.uploads_of, body)
        try:
            mf = await asyncio.to_thread(_modelfile, body, uploads)
            statuses: list[dict[str, Any]] = []
            if quantize is None:
                await asyncio.to_thread(_record, name, mf)
            else:
                statuses.append(await asyncio.to_thread(_quantized, name, mf, quantize))
        except BaseException:
            _release(uploads.links)  # the uploads' links no model came to use
            raise
        statuses.append({"status": "success"})
        if fields.get(body, "stream", bool, False):
            return Response(_lines(statuses), media_type=NDJSON)
        return JSONResponse(statuses[-1])


def _modelfile(body: dict[str, Any], uploads: blobs.Uploads) -> Any:
    """The Modelfile a create request describes, checked as a Modelfile is; its files, if
    any, are the uploads the request names."""
    from localrun.models.modelfile import Modelfile, parse

    text = fields.get(body, "modelfile", str)  # older clients send the Modelfile itself
    mf = parse(text, "the request's modelfile") if text else Modelfile()
    # Files on the server's disk are not a client's to name: refused, not dropped in silence
    # (a client's own files come as uploads, named in 'files' and 'adapters').
    if mf.adapters:
        raise UsageError(
            f"the request's modelfile names an adapter (ADAPTER {mf.adapters[0]}): "
            "a request cannot name files on the server",
            "upload the adapter (POST /api/blobs/DIGEST) and name it in 'adapters'",
        )
    if mf.projector is not None:
        line = "a second FROM" if mf.projector_instruction == "FROM" else "PROJECTOR"
        raise UsageError(
            f"the request's modelfile names a projector ({line}: {mf.projector}): "
            "a request cannot name files on the server",
            "send the modelfile with one FROM and no PROJECTOR: a vision model's projector "
            "comes with it when it is pulled",
        )
    if uploads.weights is not None:
        if fields.get(body, "from", str) or text:
            raise UsageError(
                "the request names its model twice: in 'files', and in 'from' or 'modelfile'",
                "send the uploaded model in 'files', or a model here in 'from'",
            )
        base = str(uploads.weights)
    else:
        base = _base(fields.get(body, "from", str) or mf.from_)
    mf.from_ = base
    if (system := fields.get(body, "system", str)) is not None:
        mf.system = system
    if (template := fields.get(body, "template", str)) is not None:
        mf.template = template
    for name, value in fields.get(body, "parameters", dict, {}).items():
        _parameter(mf, name, value)
    for i, m in enumerate(fields.get(body, "messages", list, [])):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise UsageError(f"{where} must be an object with 'role' and 'content'")
        role = fields.get(m, "role", str, "", where=where)
        mf.messages.append((role, fields.get(m, "content", str, "", where=where)))
    if body.get("license") is not None:
        mf.license = _license(body["license"])
    # Read back as a Modelfile file is: each parameter's name, type and range checked.
    checked = parse(mf.to_text(), "the request")
    if checked.from_ != base or checked.adapters or checked.projector is not None:
        # nothing in a value became an instruction
        raise UsageError("the request's fields do not make a valid Modelfile")
    checked.adapters = [str(p) for p in uploads.adapters]  # the server's own paths
    if uploads.projector is not None:
        checked.projector = str(uploads.projector)
    if uploads.draft is not None:
        checked.parameters["draft"] = str(uploads.draft)
    return checked


def _base(base: str) -> str:
    """The model ``from`` names: one here, never a file."""
    from localrun.hub import store
    from localrun.hub.refs import is_hub_ref

    if not base:
        raise UsageError(
            "the request names no model to build on",
            'add "from": MODEL, or upload the model\'s GGUF and name it in "files"',
        )
    if _names_a_file(base):
        raise UsageError(
            f"'from' must name a model, not a file: {base}",
            "pull the file's model first, or upload the file and name it in 'files'",
        )
    if is_hub_ref(base):
        found = store.find(base)
        if found is None or found.missing_files:
            raise ModelNotFoundError(f"model '{base}' not found", f"pull it first: {base}")
    else:
        resolve_served(base)
    return base


def _parameter(mf: Any, name: str, value: Any) -> None:
    """A create request's parameter (``stop`` may be a list), into ``mf``."""
    from localrun.models.modelfile import PARAMETERS

    if name not in PARAMETERS:
        raise UsageError(
            f"unknown parameter {json.dumps(name)[:40]}", f"use one of {', '.join(PARAMETERS)}"
        )
    values = value if name == "stop" and isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise UsageError(f"parameter {name} cannot be {json.dumps(v)[:40]}")
        if name != "stop" and isinstance(v, str) and len(v.splitlines()) > 1:
            # Written unquoted (a number's text): a break would start an instruction.
            raise UsageError(f"parameter {name} cannot hold a line break")
        if name == "draft" and isinstance(v, str) and _names_a_file(v):
            raise UsageError(
                f"parameter draft must name a model, not a file: {v[:80]}",
                "upload the draft model's GGUF and name it in 'draft_files'",
            )
        if name == "stop":
            mf.stop.append(str(v))
        else:
            mf.parameters[name] = v


def _names_a_file(value: str) -> bool:
    """Whether a Modelfile would read ``value`` as a path (``recipes``' FROM rule)."""
    from localrun.hub.refs import is_hub_ref

    looks = value.startswith(("/", ".", "~")) or value.lower().endswith(".gguf")
    return looks and not is_hub_ref(value)


def _license(value: Any) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise UsageError("'license' must be a string or a list of strings")
    return list(texts)


def _quantized(name: str, mf: Any, type_name: str) -> dict[str, Any]:
    """Record ``name`` with its own copy of its base quantized to ``type_name``, as
    ``create --quantize`` does (the checks first: a refused type records nothing)."""
    from localrun.engine.quantize import check, quantize
    from localrun.models import recipes
    from localrun.models.resolve import resolve
    from localrun.system import physical_cores

    base = resolve(mf.from_).path
    canonical = check(base, type_name).name  # a 400 before anything is recorded
    recipes.check_new_name(name)
    recipe = recipes.record(name, mf, Path.cwd())
    try:
        done = quantize(base, recipes.quantized_path(name, canonical), type_name,
                        threads=physical_cores())  # fmt: skip
        recipes.set_weights(recipe, done.path)
    except BaseException:
        recipes.remove(name)
        raise
    return {"status": f"quantized {done.source_type or 'the'} model to {done.type}"}


def _record(name: str, mf: Any) -> None:
    from localrun.models import recipes

    recipes.check_new_name(name)
    recipes.record(name, mf, Path.cwd())  # its paths are absolute: nothing is read from there


def _release(links: set[Path]) -> None:
    from localrun.models import recipes

    recipes.release_uploads(links, delete_blobs=False)  # kept for the client to try again
