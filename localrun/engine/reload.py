"""Loading a chat's model again: ``/set parameter num_ctx`` and ``/load NAME``.

The loaded model is changed in place (whoever loaded it closes it), and the one there was is
freed first, as Ollama unloads before it loads: two copies may not fit. If the new load fails,
the old model is loaded again and the error raised.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from localrun.backend.llamacpp.offload import AUTO
from localrun.engine.load import LoadedModel, load_model, speculate
from localrun.engine.options import RunOptions, run_options
from localrun.errors import LocalrunError
from localrun.models.resolve import Settings, resolve
from localrun.system import physical_cores

if TYPE_CHECKING:
    from localrun.backend.llamacpp.rpc import Endpoint


@dataclass(frozen=True)
class LoadSettings:
    """How the chat's model was loaded: what ``/set parameter num_ctx`` and ``/load NAME``
    load with again, and the threads ``/show stats`` reports."""

    n_threads: int
    n_ctx: int | None = None  # what was asked for (None: the model's default)
    gpu_layers: str | int = AUTO
    kv_type: str = "f16"
    flash_attn: str = "auto"
    repack: bool = True
    workers: tuple[Endpoint, ...] = ()

    @classmethod
    def of(cls, loaded: LoadedModel) -> LoadSettings:
        """What ``run`` loaded ``loaded`` with, as far as the loaded model tells: the
        threads its settings and this machine give (``run``'s rule without flags), its
        context and its cache type."""
        try:
            settings = resolve(loaded.name).settings
        except LocalrunError:  # a model made in a test, or a file gone since
            settings = Settings()
        try:
            threads = run_options(settings).threads
        except LocalrunError:
            threads = None
        return cls(
            n_threads=int(threads or physical_cores()),
            n_ctx=loaded.model.n_ctx,
            gpu_layers=AUTO,  # run's default: a --gpu-layers flag is not known here
            kv_type=str(getattr(loaded.model, "kv_type", "f16")),
        )


class Target(NamedTuple):
    """What a load of the chat's model loads: the weights under a name, their settings, the
    context asked for, and how answers guess ahead (a speculative method, a draft model)."""

    name: str
    path: Path
    settings: Settings
    n_ctx: int | None
    method: str
    draft: tuple[str, Path] | None


@dataclass(frozen=True)
class Switched:
    """What ``/load NAME`` switched to: the load's notes (if the weights were loaded), the
    model's options and Modelfile settings."""

    reloaded: bool
    notes: list[str]
    opts: RunOptions
    settings: Settings


def current_settings(loaded: LoadedModel) -> Settings:
    """The loaded model's settings (its adapters, projector, template), as loaded."""
    try:
        return resolve(loaded.name).settings
    except LocalrunError:
        return Settings(template=loaded.template_override, projector=loaded.projector)


def now(loaded: LoadedModel, n_ctx: int | None) -> Target:
    """The model loaded now, as a load would load it again with a context of ``n_ctx``."""
    method = "draft" if loaded.draft else "lookup" if loaded.speculate else "off"
    draft = (loaded.draft.name, loaded.draft.path) if loaded.draft else None
    return Target(loaded.name, loaded.path, current_settings(loaded), n_ctx, method, draft)


def target_of(name: str) -> tuple[Target, RunOptions, Settings]:
    """What ``/load NAME`` would load, with the model's options and Modelfile settings (its
    draft model is found by :func:`with_draft`, only when the weights are loaded)."""
    resolved = resolve(name)
    opts = run_options(resolved.settings)
    target = Target(name, resolved.path, resolved.settings, opts.n_ctx, opts.speculative, None)
    return target, opts, resolved.settings


def with_draft(target: Target, opts: RunOptions) -> Target:
    """``target`` with the draft model its options name, found."""
    if opts.draft is None:
        return target
    return target._replace(draft=(opts.draft, resolve(opts.draft).path))


def reload(loaded: LoadedModel, how: LoadSettings, target: Target) -> list[str]:
    """Free ``loaded``, then load ``target`` into it; if that fails, load the one there was
    again and raise. Return what the load had to adjust."""
    back = now(loaded, how.n_ctx)
    loaded.close()
    try:
        new = _load(loaded, how, target)
    except LocalrunError:
        _adopt(loaded, _load(loaded, how, back))
        raise
    _adopt(loaded, new)
    return list(new.notes)


def _load(old: LoadedModel, how: LoadSettings, target: Target) -> LoadedModel:
    loaded = load_model(
        target.name,
        n_ctx=target.n_ctx,
        n_threads=how.n_threads,
        gpu_layers=how.gpu_layers,
        path=target.path,
        settings=target.settings,
        workers=how.workers,
        repack=how.repack,
        kv_type=how.kv_type,
        flash_attn=how.flash_attn,
    )
    loaded.prompt_cache = old.prompt_cache
    try:
        speculate(loaded, target.method, target.draft, n_threads=how.n_threads,
                  gpu_layers=how.gpu_layers)  # fmt: skip
    except BaseException:
        loaded.close()
        raise
    return loaded


def _adopt(old: LoadedModel, new: LoadedModel) -> None:
    """Make ``old`` the model ``new`` is: the chat's caller holds ``old`` and closes it."""
    for f in fields(LoadedModel):
        setattr(old, f.name, getattr(new, f.name))
