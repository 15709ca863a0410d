"""A model from an Ollama-style registry, made a created model: the layers that
:mod:`localrun.hub.registry` downloads become a Modelfile (the weights, projector, adapters and
draft model by their blobs' links; the template, system prompt, parameters, messages and licence
read from their text layers, as Ollama writes them) recorded as ``localrun create`` records one
(:func:`localrun.models.recipes.record`), with the manifest's digest, so ``list --outdated`` can
ask the registry for a newer one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localrun.errors import GoTemplateError, RegistryError
from localrun.hub import registry
from localrun.hub.registry_names import local_name, parse_name
from localrun.models import recipes
from localrun.models.gotemplate import is_go_template, to_jinja
from localrun.models.modelfile import PARAMETERS, Modelfile, coerce_parameter

if TYPE_CHECKING:
    from localrun.hub.pull import Reporter

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class RegistryPull:
    recipe: recipes.Recipe
    manifest: registry.RegistryManifest
    downloaded_bytes: int
    resumed_bytes: int
    seconds: float
    transfer_seconds: float
    up_to_date: bool


def pull(
    text: str, *, reporter: Reporter | None = None, name: str | None = None, force: bool = False
) -> RegistryPull:
    """Pull ``text`` (a registry name) as the created model ``name`` (default: as typed);
    ``force`` pulls a model larger than this machine's memory."""
    from localrun.hub.pull import SilentReporter

    reporter = reporter or SilentReporter()
    start = time.perf_counter()
    ref = parse_name(text)
    local = name or local_name(text)
    recipes.check_new_name(local)
    manifest = registry.fetch_manifest(ref)
    current = recipes.find(local)
    if current is not None and _same(current, manifest):
        return RegistryPull(current, manifest, 0, 0, time.perf_counter() - start, 0.0, True)
    got = registry.download(manifest, reporter, force)
    files = [(kind, str(path)) for kind, path in got.files]
    mf = modelfile_of(files, got.texts, ref.full, reporter.note)
    origin: dict[str, str | float] = {
        "registry": ref.base_url,
        "name": ref.full,
        "digest": manifest.digest,
        "pulled_at": time.time(),
    }
    try:
        recipe = recipes.record(local, mf, Path.cwd(), origin=origin)
    except BaseException:
        recipes.release_uploads({path for _, path in got.files})  # back to prune's care
        raise
    return RegistryPull(recipe, manifest, got.downloaded_bytes, got.resumed_bytes,
                        time.perf_counter() - start, got.transfer_seconds, False)  # fmt: skip


def _links(mf: Modelfile) -> set[Path]:
    """The blob links a pulled model's Modelfile names."""
    named = [mf.from_, *mf.adapters, mf.projector, mf.parameters.get("draft")]
    return {Path(p) for p in named if isinstance(p, str)}


def _same(recipe: recipes.Recipe, manifest: registry.RegistryManifest) -> bool:
    """Whether the created model is this manifest's, with its files all here."""
    origin = recipe.origin or {}
    whole = all(p.is_file() for p in _links(recipe.modelfile))
    return origin.get("digest") == manifest.digest and whole


def modelfile_of(
    files: list[tuple[str, str]],
    texts: list[tuple[str, str]],
    model: str,
    note: Callable[[str], None],
) -> Modelfile:
    """The Modelfile of ``files`` ((kind, path): model, projector, adapter, draft) and ``texts``
    ((kind, content)) of the registry model ``model``; ``note`` is told what is left out."""
    mf = Modelfile()
    for kind, path in files:
        if kind == "model":
            mf.from_ = path
        elif kind == "projector":
            mf.projector = path
        elif kind == "draft":  # a draft model for speculative decoding
            mf.parameters["draft"] = path
        else:
            mf.adapters.append(path)
    for kind, text in texts:
        _apply_text(mf, kind, text, model, note)
    return mf


def _apply_text(
    mf: Modelfile, kind: str, text: str, model: str, note: Callable[[str], None]
) -> None:
    if kind == "template":
        mf.template = _template(text, model, note)
    elif kind == "system":
        mf.system = text
    elif kind == "license":
        mf.license.append(text)
    elif kind == "params":
        _params(mf, _json(text, model, kind), note)
    else:
        messages = _json(text, model, kind)
        for m in messages if isinstance(messages, list) else []:
            if isinstance(m, dict) and m.get("role") in ROLES:
                mf.messages.append((m["role"], str(m.get("content", ""))))


def _json(text: str, model: str, kind: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise RegistryError(
            f"the {kind} layer of {model} is not JSON", "pick another tag"
        ) from None


def _template(text: str, model: str, note: Callable[[str], None]) -> str | None:
    """The Go template as the Modelfile keeps it, or None (the GGUF's own) when it uses a form
    that does not translate: the model runs all the same, with a note saying so."""
    if not is_go_template(text):
        return text
    try:
        to_jinja(text)
    except GoTemplateError as e:
        note(
            f"{model}: its template does not translate ({e.message}); "
            "it runs with its GGUF's own chat template"
        )
        return None
    return text


def _params(mf: Modelfile, params: Any, note: Callable[[str], None]) -> None:
    """The params layer (JSON: Ollama's options, ``stop`` a list) as PARAMETER lines."""
    if not isinstance(params, dict):
        return
    for key, value in params.items():
        values = value if isinstance(value, list) else [value]
        if key == "stop":
            mf.stop += [str(v) for v in values]
            continue
        if not values:
            continue
        if key not in PARAMETERS:
            note(f"parameter '{key}' is not one localrun knows: left out")
            continue
        try:
            setting = json.dumps(values[0]) if isinstance(values[0], bool) else str(values[0])
            mf.parameters[key] = coerce_parameter(key, setting)
        except ValueError as e:
            note(f"parameter '{key}' left out: {e}")
