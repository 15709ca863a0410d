"""Which models stay loaded: one batching engine each, as many as memory allows.

The one place that loads and unloads models for the server (as Ollama's scheduler is).
Requests for a loaded model join its engine at once; a model not loaded is loaded, after
unloading the least recently used idle models if it would not fit in memory beside them.
A model answering a request is never unloaded: a load that cannot make room waits for one
to finish. After its last request a model stays loaded for its keep-alive (5 minutes unless
the request or ``--keep-alive`` says otherwise; 0 unloads at once, a negative one never).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from localrun.backend import context_size
from localrun.engine.answerer import LocalAnswerer
from localrun.engine.batch import BatchEngine
from localrun.engine.load import (
    LoadedModel,
    default_parallel,
    load_model,
    sequence_context,
    speculate,
)
from localrun.engine.options import run_options
from localrun.engine.runner import ModelRunner
from localrun.errors import BusyError, ModelLoadError, ModelNotFoundError, NeedsPullError
from localrun.models.resolve import Resolved, Settings, resolve
from localrun.server.config import ServeConfig
from localrun.system import physical_cores, physical_memory

MEMORY_SHARE = 0.8  # of this machine's memory that loaded models may take together
log = logging.getLogger("localrun.server")
WAIT_FOR_ROOM_S = 300.0  # how long a load waits for a busy model to finish, then 503


@dataclass(eq=False)
class Runner:
    """A loaded model serving requests through its batching engine."""

    name: str
    num_ctx: int | None  # as requested: a request for another context gets another runner
    model: ModelRunner  # the loaded model and its engine, closed in that order
    settings: Settings
    digest: str
    size: int  # bytes: weights and KV cache
    active: int = 0  # requests running or waiting in its engine
    last_used: float = field(default_factory=time.monotonic)
    expires_at: float | None = None  # wall-clock time of its unload; None: never

    @property
    def loaded(self) -> LoadedModel:
        return self.model.loaded

    @property
    def engine(self) -> BatchEngine:
        return self.model.engine

    @property
    def context_length(self) -> int:
        return self.loaded.seq_ctx

    @functools.cached_property
    def answerer(self) -> LocalAnswerer:
        """What starts its answers (the pool counts the time requests wait for a load)."""
        return LocalAnswerer(self.loaded, counts_load=False)


def resolve_served(name: str) -> Resolved:
    """A model the server may load: a pulled, created or library model, or the demo.

    Never a path: a request must not make the server open files of its choosing.
    """
    from localrun.hub import store
    from localrun.models import names, packaged, recipes

    asked, name = name, names.canonical(name)
    known = (
        name in packaged.names() or store.find(name) is not None or recipes.find(name) is not None
    )
    if asked.startswith(("/", ".", "~")) or asked.endswith(".gguf"):
        # A path is never pulled: saying "pull /etc/passwd" would be nonsense.
        hint = "a request names a model, never a file: GET /api/tags lists them"
    elif known:  # a library model, not pulled
        hint = f"pull it first: POST /api/pull, or localrun pull {name}"
    else:
        hint = names.did_you_mean(asked)
    try:
        if known:
            return resolve(name)
    except NeedsPullError:  # a library name whose model is not pulled
        pass
    raise ModelNotFoundError(f"model '{asked}' not found", hint)


def _size(path: Any, n_ctx: int, kv_type: str = "f16") -> int:
    """Weights plus the KV cache of ``n_ctx`` cells of ``kv_type``."""
    from localrun.backend.llamacpp.offload import model_sizes
    from localrun.gguf.reader import read_gguf

    info = read_gguf(path)
    return int(path.stat().st_size) + sum(model_sizes(info, n_ctx, kv_type).kv_per_layer)


class ModelPool:
    """The loaded models of one server."""

    def __init__(self, config: ServeConfig, load: Callable[..., LoadedModel] = load_model) -> None:
        self.config = config
        self._load = load
        self._runners: dict[tuple[str, int | None], Runner] = {}
        self._lock = asyncio.Lock()  # one load or unload decision at a time
        self._released = asyncio.Event()
        self._budget = int((physical_memory() or 1 << 62) * MEMORY_SHARE)
        self._reaper: asyncio.Task[None] | None = None

    def runners(self) -> list[Runner]:
        """The loaded models, most recently used first."""
        return sorted(self._runners.values(), key=lambda r: -r.last_used)

    async def acquire(self, name: str, num_ctx: int | None) -> Runner:
        """The runner of ``name``, loaded if need be, with this request counted on it."""
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap())
        resolved = await asyncio.to_thread(resolve_served, name)
        if num_ctx is None:
            # The Modelfile's context, else the server's --ctx: clients that cannot send
            # Ollama's options (an agent on /v1) get what the model was made with, not 4096.
            made = resolved.settings.parameters.get("num_ctx")
            num_ctx = int(made) if made is not None else self.config.n_ctx
        key = (resolved.name, num_ctx)
        loaded = self._runners.get(key)
        if loaded is not None and loaded.engine.alive:
            return self._count(loaded)  # no wait behind another model's load
        deadline = time.monotonic() + WAIT_FOR_ROOM_S
        while True:
            async with self._lock:
                runner = self._runners.get(key)
                if runner is not None and not runner.engine.alive and runner.active == 0:
                    del self._runners[key]  # its engine failed: load the model afresh
                    await asyncio.to_thread(runner.model.close)
                    runner = None
                if runner is not None:
                    return self._count(runner)
                need = await asyncio.to_thread(self._estimate, resolved, num_ctx)
                if await self._make_room(need):
                    runner = await self._start(resolved, num_ctx)
                    self._runners[key] = runner
                    return self._count(runner)
                self._released.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise BusyError(
                    f"no room to load '{name}': every loaded model is answering",
                    "retry later, or stop a model with: localrun stop MODEL",
                    retry_after=5,
                )
            with contextlib.suppress(TimeoutError):  # and look again
                await asyncio.wait_for(self._released.wait(), timeout=left)

    def _count(self, runner: Runner) -> Runner:
        limit = runner.loaded.n_seq + self.config.max_queue
        if runner.active >= limit:
            raise BusyError(
                f"'{runner.name}' has {runner.active} requests running or waiting, "
                f"its limit ({runner.loaded.n_seq} at once, {self.config.max_queue} queued)",
                "retry after the time in the Retry-After header",
                retry_after=1,
            )
        runner.active += 1
        runner.last_used = time.monotonic()
        runner.expires_at = None
        return runner

    def release(self, runner: Runner, keep_alive: float | None) -> None:
        """A request on ``runner`` is over; it stays loaded for ``keep_alive`` seconds."""
        runner.active -= 1
        runner.last_used = time.monotonic()
        seconds = self.config.keep_alive if keep_alive is None else keep_alive
        runner.expires_at = None if seconds < 0 else time.time() + seconds
        if runner.active == 0 and seconds == 0:
            asyncio.get_running_loop().create_task(self.unload(runner.name))
        self._released.set()

    async def unload(self, name: str) -> bool:
        """Unload every idle instance of ``name``; whether one was loaded."""
        async with self._lock:
            found = False
            for key, runner in list(self._runners.items()):
                if key[0] == name:
                    found = True
                    if runner.active == 0:
                        del self._runners[key]
                        await asyncio.to_thread(runner.model.close)
            self._released.set()
            return found

    async def close(self) -> None:
        """Unload everything (the server is stopping)."""
        if self._reaper is not None:
            self._reaper.cancel()
        async with self._lock:
            runners, self._runners = list(self._runners.values()), {}
            for runner in runners:
                await asyncio.to_thread(runner.model.close)

    # -- loading ----------------------------------------------------------------------------

    def _parallel(self, resolved: Resolved, num_ctx: int | None) -> int:
        kv_type = self._kv(resolved.settings)[0]
        return self.config.parallel or default_parallel(resolved.path, num_ctx, kv_type)

    def _kv(self, settings: Settings) -> tuple[str, str]:
        """The KV cache's type and flash attention: the server's flags, else the model's
        Modelfile, else the configuration's default."""
        opts = run_options(settings, kv_type=self.config.kv_type, flash_attn=self.config.flash_attn)
        return opts.kv_type, opts.flash_attn

    def _estimate(self, resolved: Resolved, num_ctx: int | None) -> int:
        from localrun.gguf.reader import read_gguf

        trained = int(read_gguf(resolved.path).arch_value("context_length") or 0)
        n_seq = self._parallel(resolved, num_ctx)
        kv_type = self._kv(resolved.settings)[0]
        per_seq = context_size(sequence_context(resolved.path, num_ctx, n_seq, kv_type)[0], trained)
        if trained:
            per_seq = min(per_seq, trained)  # as the load lowers it
        # A default context is one cache the sequences share (engine/load.py).
        return _size(resolved.path, per_seq * (n_seq if num_ctx is not None else 1), kv_type)

    async def _make_room(self, need: int) -> bool:
        """Unload idle models, least recently used first, until ``need`` bytes fit."""
        while True:
            used = sum(r.size for r in self._runners.values())
            fits = used + need <= self._budget or not self._runners
            if fits and len(self._runners) < self.config.max_loaded:
                return True
            idle = [(k, r) for k, r in self._runners.items() if r.active == 0]
            if not idle:
                return False
            key, runner = min(idle, key=lambda kr: kr[1].last_used)
            del self._runners[key]
            await asyncio.to_thread(runner.model.close)

    async def _start(self, resolved: Resolved, num_ctx: int | None) -> Runner:
        n_seq = self._parallel(resolved, num_ctx)
        threads = self.config.threads or physical_cores()
        kv_type, flash_attn = self._kv(resolved.settings)

        def load() -> ModelRunner:
            loaded = self._load(
                resolved.name,
                n_ctx=num_ctx,
                n_threads=threads,
                path=resolved.path,
                settings=resolved.settings,
                n_seq=n_seq,
                kv_type=kv_type,
                flash_attn=flash_attn,
                cpu_moe=self.config.cpu_moe,
            )
            try:
                self._speculate(loaded, resolved.settings, threads)
                runner = ModelRunner(loaded)
                runner.start()  # its thread starts now, not on the first request
            except BaseException:
                loaded.close()  # its engine first, if it started
                raise
            return runner

        model = await asyncio.to_thread(load)
        if model.loaded.context_reason:
            log.info("%s: %s", resolved.name, model.loaded.context_reason)
        try:
            n_ctx = model.loaded.model.n_ctx
            size = await asyncio.to_thread(_size, resolved.path, n_ctx, kv_type)
        except BaseException:
            await asyncio.to_thread(model.close)
            raise
        digest = resolved.sha256 or ""
        return Runner(resolved.name, num_ctx, model, resolved.settings, digest, size)

    def _speculate(self, loaded: LoadedModel, settings: Settings, threads: int) -> None:
        """Speculative decoding as the server's flags, else the model's Modelfile, say. A
        server-wide draft model that does not share this model's vocabulary is left out."""
        config = self.config
        opts = run_options(settings, speculative=config.speculative, draft=config.draft)
        if opts.draft is None:
            speculate(loaded, opts.speculative, n_threads=threads)
            return
        found = resolve_served(opts.draft)
        try:
            speculate(loaded, "draft", (found.name, found.path), n_threads=threads)
        except ModelLoadError as e:
            if config.draft is None:
                raise  # the model's own Modelfile named it: its error to see
            log.warning("%s: answering without speculative decoding (%s)", loaded.name, e.message)

    async def _reap(self) -> None:
        """Unload models whose keep-alive has run out, once a second."""
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            expired = {
                r.name
                for r in self._runners.values()
                if r.active == 0 and r.expires_at is not None and r.expires_at <= now
            }
            for name in expired:
                await self.unload(name)
