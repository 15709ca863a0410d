"""What `localrun show` reports about a model, read from its GGUF header."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from localrun.gguf.reader import file_type_name, read_gguf
from localrun.hub import store
from localrun.hub.pull import resolve_local
from localrun.hub.refs import is_hub_ref
from localrun.hub.store import NotPulledError
from localrun.models import recipes
from localrun.models.modelfile import Modelfile


@dataclass(frozen=True)
class ModelFacts:
    name: str
    path: str
    size: int
    sha256: str
    architecture: str
    parameters: int
    quantization: str | None
    context_length: int | None
    embedding_length: int | None
    layers: int | None
    chat_template: bool
    license: str | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _locate(ref: str, _seen: tuple[str, ...] = ()) -> tuple[str, list[Path], str]:
    """(name, files, sha256 of the first file) without touching the network."""
    recipe = recipes.find(ref) if ref != "demo" and not is_hub_ref(ref) else None
    if recipe is not None and store.load(ref) is None and ref not in _seen:
        try:
            _, files, sha256 = _locate(recipe.modelfile.from_, (*_seen, ref))
        except NotPulledError:
            raise NotPulledError(
                f"model '{ref}' is not pulled (it is FROM {recipe.modelfile.from_})",
                f"pull it with: localrun pull {ref}",
            ) from None
        return ref, files, sha256
    if ref == "demo":
        from localrun.models.demo import demo_model_path, expected_sha256

        return "demo", [demo_model_path()], expected_sha256()
    manifest = resolve_local(ref)
    if manifest is None and is_hub_ref(ref):
        manifest = store.require(ref)  # raises "not pulled" with the hint to pull
    if manifest is not None:
        manifest.require_files()
        files = [manifest.file_path(f) for f in manifest.files]
        return manifest.name, files, manifest.files[0].sha256
    from localrun.engine import resolve_model

    path = resolve_model(ref)
    return ref, [path], store.sha256_of(path)


def model_facts(ref: str) -> ModelFacts:
    """Describe a model: a pulled name, a Hub reference, ``demo`` or a path."""
    name, files, sha256 = _locate(ref)
    info = read_gguf(files[0])
    meta = info.metadata
    # A split model keeps its metadata in the first shard and tensors in all of them.
    parameters = info.parameters + sum(read_gguf(f).parameters for f in files[1:])
    template = meta.get("tokenizer.chat_template")
    file_type = meta.get("general.file_type")
    return ModelFacts(
        name=name,
        path=str(files[0]),
        size=sum(f.stat().st_size for f in files),
        sha256=sha256,
        architecture=info.architecture,
        parameters=parameters,
        quantization=file_type_name(int(file_type)) if file_type is not None else None,
        context_length=_int(info.arch_value("context_length")),
        embedding_length=_int(info.arch_value("embedding_length")),
        layers=_int(info.arch_value("block_count")),
        chat_template=isinstance(template, str) and bool(template.strip()),
        license=meta.get("general.license"),
    )


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int) else None


def modelfile_of(ref: str) -> Modelfile:
    """The Modelfile of a created or library model; for any other model, one that names it.

    A model without a recipe gets ``FROM`` itself, plus the GGUF's own chat template and
    licence when they can be read locally.
    """
    recipe = recipes.find(ref)
    if recipe is not None and store.load(ref) is None:
        return recipe.modelfile
    mf = Modelfile(from_=ref)
    manifest = resolve_local(ref) if ref != "demo" else None
    if manifest is None and is_hub_ref(ref):
        manifest = store.require(ref)
    if manifest is not None:
        path = manifest.model_path
    else:
        from localrun.engine import resolve_model

        path = resolve_model(ref)
    meta = read_gguf(path).metadata
    template = meta.get("tokenizer.chat_template")
    if isinstance(template, str):
        mf.template = template
    if isinstance(meta.get("general.license"), str):
        mf.license = [meta["general.license"]]
    return mf
