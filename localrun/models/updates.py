"""Where each pulled model came from, whether its source has a newer version, and which source
``pull NAME`` pulls from.

A model pulled from the Hub records its repository, revision and commit (``store.Manifest``); one
pulled from a registry records the manifest's digest (``Recipe.origin``). Asking whether it is out
of date reads the Hub's file list at the revision (``HfApi.model_info``: a newer commit whose files
are the same is not outdated) or the registry's manifest; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from localrun.errors import LocalrunError, ModelNotFoundError, NetworkError, UsageError
from localrun.hub import registry, registry_names, store
from localrun.hub.refs import is_hub_ref, parse_hub_ref
from localrun.models import fromregistry

if TYPE_CHECKING:
    from localrun.hub.pull import Reporter

HUB = "hub"
REGISTRY = "registry"


@dataclass(frozen=True)
class Source:
    """Where a model here came from, and which version of it is here."""

    name: str  # the model's name here
    kind: str  # HUB or REGISTRY
    ref: str  # what pulls it again: a Hub reference, a registry name
    revision: str  # what is here: the Hub commit, the registry manifest's digest
    pulled_at: float
    asked: str | None = None  # the Hub revision asked for (a branch, tag), None: the default

    @property
    def short_revision(self) -> str:
        text = self.revision.removeprefix("sha256:")
        return ("sha256:" if self.kind == REGISTRY else "") + text[:12]


def hub_source(m: store.Manifest) -> Source:
    """Where a model pulled from the Hub came from."""
    return Source(m.name, HUB, m.hub_ref, m.commit, m.pulled_at, m.revision)


def sources() -> list[Source]:
    """Every model here that came from the Hub or a registry, by name."""
    from localrun.models import recipes

    found = [hub_source(m) for m in store.all_manifests()]
    for r in recipes.created():
        if r.origin is not None:
            o = r.origin
            found.append(
                Source(
                    r.name,
                    REGISTRY,
                    str(o.get("name", "")),
                    str(o.get("digest", "")),
                    float(o.get("pulled_at", 0.0)),
                )
            )
    return sorted(found, key=lambda s: s.name)


def source_of(name: str) -> Source | None:
    """Where the model called ``name`` came from (None: not pulled: created, packaged...)."""
    from localrun.models import recipes

    manifest = store.load(name)
    if manifest is not None:
        return hub_source(manifest)
    recipe = recipes.find(name)
    if recipe is not None and recipe.origin is not None:
        return next((s for s in sources() if s.name == recipe.name), None)
    return None


@dataclass(frozen=True)
class Check:
    """What a model's source says about it now."""

    source: Source
    latest: str | None  # the source's version now (None: it could not be asked)
    outdated: bool
    problem: str | None = None  # why it could not be asked, in one line


def check(source: Source) -> Check:
    """Ask the model's source whether a newer version exists (nothing is downloaded)."""
    try:
        if source.kind == REGISTRY:
            latest = registry.fetch_manifest(registry_names.parse_name(source.ref)).digest
            return Check(source, latest, latest != source.revision)
        return _check_hub(source)
    except LocalrunError as e:
        return Check(source, None, False, e.line().removeprefix("Error: "))


def _check_hub(source: Source) -> Check:
    from huggingface_hub import HfApi

    from localrun.hub.pull import _as_localrun_errors, endpoint

    manifest = store.load(source.name)
    assert manifest is not None  # a Hub source is a manifest's
    with _as_localrun_errors(parse_hub_ref(source.ref)):
        info = HfApi(endpoint=endpoint()).model_info(
            manifest.repo, revision=manifest.revision, files_metadata=True
        )
    published = {s.rfilename: s.lfs.sha256 if s.lfs else None for s in info.siblings or []}
    changed = any(published.get(f.path) != f.sha256 for f in manifest.stored_files)
    return Check(source, str(info.sha), changed)


# -- which source a pull takes ---------------------------------------------------------------


def registry_target(text: str) -> tuple[str, str] | None:
    """(registry name, local name) when ``pull text`` pulls from a registry, else None.

    Explicit registry names (``ollama.com/...``) and models pulled from one go there; Hub
    references, library and local names, and paths do not; any other name that reads as
    ``[NAMESPACE/]MODEL[:TAG]`` is looked for in the registry, as Ollama does.
    """
    from localrun.models import names, packaged, recipes

    if registry_names.is_registry_name(text):
        return text, registry_names.local_name(text)
    if is_hub_ref(text) or text.lower().endswith(".gguf") or text.startswith((".", "/", "~")):
        return None
    name = names.canonical(text)
    recipe = recipes.find(name)
    if recipe is not None and recipe.origin is not None:
        return str(recipe.origin["name"]), recipe.name
    if recipe is not None or store.load(name) is not None or name in packaged.names():
        return None
    try:
        registry_names.parse_name(text)
    except UsageError:
        return None
    return text, text


def pull_from_registry(
    text: str, name: str, reporter: Reporter | None = None, force: bool = False
) -> fromregistry.RegistryPull:
    """Pull ``text`` from its registry as ``name``; a bare name the registry lacks (or a registry
    out of reach) is refused with the local names close to it."""
    from localrun.models import names

    try:
        return fromregistry.pull(text, reporter=reporter, name=name, force=force)
    except (ModelNotFoundError, NetworkError) as e:
        if registry_names.is_registry_name(text) or names.close_to(text) == []:
            raise
        hint = names.did_you_mean(text)
        raise type(e)(
            e.message, f"{hint}; or {e.hint}" if isinstance(e, NetworkError) else hint
        ) from None


@dataclass(frozen=True)
class Update:
    """What ``pull --all`` did for one model."""

    source: Source
    updated: bool
    problem: str | None = None


def update(source: Source, reporter: Reporter | None = None) -> Update:
    """Bring one model up to date with its source: the new files are downloaded and verified
    before the model points at them; the old ones stay until then."""
    from localrun.hub import pull

    try:
        if source.kind == REGISTRY:
            result = fromregistry.pull(source.ref, reporter=reporter, name=source.name)
            return Update(source, not result.up_to_date)
        had = store.load(parse_hub_ref(source.ref).name) is not None
        pulled = pull.pull(source.ref, reporter=reporter)
        if pulled.manifest.name != source.name:  # a copy (cp): pulled under its Hub name
            store.save(replace(pulled.manifest, name=source.name))
            if not had:  # that name was not here before: only the copy stays listed
                store.remove(pulled.manifest.name)  # its files are the copy's: they stay
        return Update(source, not pulled.up_to_date)
    except LocalrunError as e:
        return Update(source, False, e.line().removeprefix("Error: "))


def origin(name: str, manifest: store.Manifest | None) -> dict[str, object] | None:
    """Where the model ``name`` came from, for ``show``: the Hub repository, revision, commit
    and file, or the registry name and manifest digest, with when it was pulled; a created
    model's creation time. ``manifest``: the Hub files it runs (a created model's base's)."""
    from localrun.models import recipes

    recipe = recipes.find(name)
    found: dict[str, object] = {}
    if recipe is not None and recipe.source == "created":
        found["created"] = recipe.created_at
    if recipe is not None and recipe.origin is not None:
        o = recipe.origin
        found.update(
            registry=o.get("registry"),
            name=o.get("name"),
            manifest=o.get("digest"),
            pulled_at=o.get("pulled_at"),
        )
    elif manifest is not None:
        found.update(
            repository=manifest.repo,
            revision=manifest.revision or "main",
            commit=manifest.commit,
            file=manifest.files[0].path,
            pulled_at=manifest.pulled_at,
        )
    return found or None
