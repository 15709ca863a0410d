"""The one resolver: what the user typed, turned into GGUF files and the settings to run them.

A model is named as ``demo``, a Hub reference, a pulled model's name, a created or library
model (a Modelfile whose FROM is resolved in turn), or a path to a ``.gguf`` file. Nothing
here downloads: a Hub model that is not pulled (or no longer whole) raises
:class:`NeedsPullError`, and the caller decides whether to pull it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from localrun.errors import ModelNotFoundError, NeedsPullError, UsageError
from localrun.gguf.check import check_model_file
from localrun.hub import store
from localrun.hub.refs import is_hub_ref
from localrun.hub.registry_names import is_registry_name
from localrun.models import names, packaged, recipes
from localrun.prompt.template import Message

DEMO = "demo"


@dataclass(frozen=True)
class Settings:
    """What a Modelfile (or a chain of them) says about running a model."""

    parameters: dict[str, float | int | str] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    system: str | None = None
    template: str | None = None  # Jinja
    messages: tuple[Message, ...] = ()
    adapters: tuple[Path, ...] = ()
    projector: Path | None = None  # a vision model's multimodal projector (mmproj GGUF)


@dataclass(frozen=True)
class Resolved:
    """A model reference resolved to its files, with the settings its recipes give it."""

    name: str
    files: tuple[Path, ...]  # the first is the one to load (the first shard of a split model)
    settings: Settings = field(default_factory=Settings)
    manifest: store.Manifest | None = None  # when the files come from the store
    sha256: str | None = None  # of the first file, when it is known without hashing

    @property
    def path(self) -> Path:
        return self.files[0]


def resolve(ref: str, _seen: tuple[str, ...] = ()) -> Resolved:
    """Resolve ``ref`` without touching the network (see the module's docstring)."""
    if not ref.strip():
        raise ModelNotFoundError(
            "the model name is empty", "name a model: see localrun list and localrun library"
        )
    ref = names.canonical(ref)
    if ref in packaged.names():
        from localrun.models.demo import demo_model_path

        # Its library recipe gives it the settings its model card recommends.
        recipe = recipes.library().get(ref)
        settings = _merge(Settings(), recipe) if recipe is not None else Settings()
        path = demo_model_path() if ref == DEMO else packaged.model_path(ref)
        return Resolved(ref, (path,), settings, sha256=packaged.sha256(ref))
    manifest = store.find(ref)
    if is_hub_ref(ref) and (manifest is None or manifest.missing_files):
        raise NeedsPullError(ref, ref)
    if manifest is not None:
        manifest.require_files()
        files = tuple(manifest.file_path(f) for f in manifest.files)
        settings = Settings(projector=manifest.projector_path)
        return Resolved(manifest.name, files, settings, manifest, manifest.files[0].sha256)
    recipe = recipes.find(ref)
    if recipe is not None:
        if ref in _seen:
            raise ModelNotFoundError(
                f"the models {' -> '.join((*_seen, ref))} are each FROM the next, in a loop",
                "change one FROM to a model file or a Hub reference",
            )
        base = resolve(recipe.modelfile.from_, (*_seen, ref))
        projector = recipe.modelfile.projector
        if projector is not None and not Path(projector).is_file():
            raise ModelNotFoundError(
                f"the projector of '{ref}' is gone: no file at {projector}",
                f"put it back, or create {ref} again with another PROJECTOR",
            )
        if recipe.weights is not None:  # its own quantization of its base
            if not Path(recipe.weights).is_file():
                raise ModelNotFoundError(
                    f"the quantized weights of '{ref}' are gone: no file at {recipe.weights}",
                    f"create {ref} again, or remove it: localrun rm {ref}",
                )
            return Resolved(ref, (Path(recipe.weights),), _merge(base.settings, recipe))
        return Resolved(ref, base.files, _merge(base.settings, recipe), base.manifest, base.sha256)
    if is_registry_name(ref):  # ollama.com/library/NAME: pulled as a created model, not yet here
        raise NeedsPullError(ref, ref)
    path = Path(ref).expanduser()
    try:
        exists = path.exists()
    except OSError:  # a name too long to be a file name, for one
        exists = False
    if exists or path.suffix == ".gguf" or "/" in ref:
        check_model_file(path)
        return Resolved(ref, (path,))
    raise ModelNotFoundError(
        f"unknown model '{ref}': not a file, a pulled or created model, or a Hub reference",
        names.did_you_mean(ref),
    )


def _merge(base: Settings, recipe: recipes.Recipe) -> Settings:
    """The recipe's settings over its base's."""
    mf = recipe.modelfile
    return Settings(
        parameters={**base.parameters, **mf.parameters},
        stop=tuple(mf.stop) or base.stop,
        system=mf.system if mf.system is not None else base.system,
        template=recipe.jinja_template or base.template,
        messages=tuple(Message(r, t) for r, t in mf.messages) or base.messages,
        adapters=base.adapters + tuple(Path(a) for a in mf.adapters),
        projector=Path(mf.projector) if mf.projector is not None else base.projector,
    )


def hub_ref_for(name: str) -> str:
    """The Hub reference that ``pull NAME`` pulls: a Hub reference as is, else the Hub FROM
    at the end of a library or created model's chain of recipes."""
    if is_hub_ref(name):
        return name
    name = names.canonical(name)
    seen = [name]
    recipe = recipes.find(name)
    while recipe is not None and not is_hub_ref(recipe.modelfile.from_):
        base = names.canonical(recipe.modelfile.from_)  # FROM llama3.2: the library's 3b
        if base in seen:
            break
        seen.append(base)
        recipe = recipes.find(base)
    if recipe is not None and is_hub_ref(recipe.modelfile.from_):
        return recipe.modelfile.from_
    if name in packaged.names():
        raise UsageError(
            f"'{name}' comes in the Python package {packaged.package_of(name)}, not from the Hub",
            f"it needs no pull: localrun run {name}"
            if packaged.installed(name)
            else f"install it with: pip install {packaged.package_of(name)}",
        )
    known = recipes.find(name) is not None or store.load(name) is not None
    raise UsageError(
        f"'{name}' is not a Hub reference or a library model on the Hub",
        "pull hf.co/ORG/REPO[:QUANT], or a name from: localrun library"
        if known
        else names.did_you_mean(name),
    )


def copy(src: str, dst: str) -> store.Manifest:
    """Give a pulled model another name: one namespace with created and library models."""
    manifest = store.find(src)
    if manifest is None:
        manifest = store.require(src)  # raises "not pulled" with the hint
    recipes.check_name_free(dst)
    return store.copy(manifest, dst)
