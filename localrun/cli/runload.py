"""A local model loaded for ``localrun run`` as its flags and the run's settings say: the
threads, the draft model, the sequences of a batch, the RPC workers, a spinner meanwhile."""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from localrun.cli.progress import resolve_or_pull
from localrun.system import run_threads

if TYPE_CHECKING:
    from localrun import engine
    from localrun.backend.llamacpp.rpc import Endpoint
    from localrun.cli.runflags import Load
    from localrun.models.resolve import Resolved


@dataclass(frozen=True)
class Local:
    """A loaded model, with what it was loaded with that the answer or the chat reports."""

    loaded: engine.LoadedModel
    threads: int
    workers: tuple[Endpoint, ...]


def load_local(
    resolved: Resolved,
    opts: engine.RunOptions,
    flags: Load,
    *,
    batch: bool,
    parallel: int | None,
    verbose: bool,
    spinner: bool,
) -> Local:
    """Load ``resolved`` (and its draft model): for a batch, ``parallel`` sequences, or as
    many as this machine's memory holds; else one."""
    from localrun import engine

    n_threads = _threads(opts, verbose)
    draft_model = None
    if opts.draft is not None:
        draft_model = (opts.draft, resolve_or_pull(opts.draft).path)
    n_seq = 1
    if batch:
        n_seq = parallel or engine.default_parallel(resolved.path, opts.n_ctx, opts.kv_type)
    workers = engine.parse_endpoints(flags.rpc) if flags.rpc else ()
    status: AbstractContextManager[object] = nullcontext()
    if spinner:
        from rich.console import Console

        status = Console(stderr=True).status(f"Loading {flags.model}…")
    with status:
        loaded = engine.load_model(
            flags.model,
            n_ctx=opts.n_ctx,
            n_threads=n_threads,
            gpu_layers=opts.gpu_layers,
            path=resolved.path,
            settings=resolved.settings,
            n_seq=n_seq,
            workers=workers,
            repack=flags.repack,
            kv_type=opts.kv_type,
            flash_attn=opts.flash_attn,
            cpu_moe=flags.cpu_moe,
        )
        try:
            engine.speculate(
                loaded,
                opts.speculative,
                draft_model,
                n_threads=n_threads,
                gpu_layers=opts.gpu_layers,
            )
        except BaseException:
            loaded.close()
            raise
    loaded.prompt_cache = flags.prompt_cache
    for note in loaded.notes:
        print(note, file=sys.stderr)
    if verbose and loaded.context_reason:
        print(loaded.context_reason, file=sys.stderr)
    if verbose and batch:
        print(f"parallel: {n_seq} sequences of {loaded.seq_ctx} tokens", file=sys.stderr)
    return Local(loaded, n_threads, workers)


def _threads(opts: engine.RunOptions, verbose: bool) -> int:
    """The threads asked for, else the physical cores that other processes leave idle."""
    if opts.threads:
        return opts.threads
    n_threads, busy = run_threads()
    if busy and verbose:
        cores = n_threads + busy
        print(f"threads: {n_threads}, as other processes keep {busy} of the {cores} cores "
              "busy (--threads sets it)", file=sys.stderr)  # fmt: skip
    return n_threads
