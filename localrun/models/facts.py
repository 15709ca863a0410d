"""What `localrun show` reports about a model, read from its GGUF header."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from localrun.errors import NeedsPullError
from localrun.gguf.reader import GGUFInfo, file_type_name, read_gguf
from localrun.hub import store
from localrun.models import names, packaged, recipes, updates
from localrun.models.modelfile import Modelfile
from localrun.models.resolve import Resolved, resolve


@dataclass(frozen=True)
class ProjectorFacts:
    """A vision (or audio) model's projector: the file that turns media into embeddings."""

    path: str
    size: int
    modalities: tuple[str, ...]  # "vision", "audio": what its encoders take


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
    projector: ProjectorFacts | None
    capabilities: tuple[str, ...]  # as Ollama names them: completion, vision, audio, tools
    # Where it came from (Hub repository, revision, commit, file; or registry name and manifest
    # digest) and when it was pulled or created; None for a file or a packaged model.
    origin: dict[str, object] | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def unpulled_recipe(ref: str) -> recipes.Recipe | None:
    """The library recipe ``ref`` names when its model is not pulled (else None)."""
    name = names.canonical(ref)
    recipe = recipes.find(name)
    if recipe is None or recipe.source != "library" or name in packaged.names():
        return None
    try:
        resolve(name)
    except NeedsPullError:
        return recipe
    return None


def model_facts(ref: str) -> ModelFacts:
    """Describe a model: a pulled name, a Hub reference, ``demo`` or a path."""
    try:
        resolved = resolve(ref)
    except NeedsPullError:
        raise NeedsPullError(ref, ref) from None  # "localrun pull NAME" takes library names too
    name, files = resolved.name, resolved.files
    sha256 = resolved.sha256 or store.sha256_of(resolved.path)
    info = read_gguf(files[0])
    meta = info.metadata
    # A split model keeps its metadata in the first shard and tensors in all of them.
    parameters = info.parameters + sum(read_gguf(f).parameters for f in files[1:])
    template = chat_template(resolved, meta)
    file_type = meta.get("general.file_type")
    projector = projector_facts(resolved.settings.projector)
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
        chat_template=template is not None,
        license=meta.get("general.license"),
        projector=projector,
        capabilities=capabilities(template, projector, pooling_of(info)),
        origin=updates.origin(name, resolved.manifest),
    )


def chat_template(resolved: Resolved, metadata: dict[str, Any]) -> str | None:
    """The chat template the model runs with: its Modelfile's TEMPLATE, else its GGUF's own
    (as the engine chooses, localrun.engine.load); None for a completion-only model."""
    template = resolved.settings.template or metadata.get("tokenizer.chat_template")
    return template if isinstance(template, str) and template.strip() else None


def projector_facts(path: Path | None) -> ProjectorFacts | None:
    """What the projector file reads (None: a text model)."""
    if path is None:
        return None
    meta = read_gguf(path).metadata
    audio = meta.get("clip.has_audio_encoder") is True
    # Projectors written before audio encoders existed (LLaVA's) may lack the key: all vision.
    vision = meta.get("clip.has_vision_encoder", not audio) is True
    modalities = tuple(m for m, has in (("vision", vision), ("audio", audio)) if has)
    return ProjectorFacts(str(path), path.stat().st_size, modalities)


def capabilities(
    template: Any, projector: ProjectorFacts | None, pooling: str | None = None
) -> tuple[str, ...]:
    """What a model can be asked to do, as Ollama's ``show`` names it: an embedding model
    (its GGUF names a pooling type) only ``embedding``, a reranker (rank pooling) ``rerank``."""
    if pooling is not None:
        return ("rerank",) if pooling == "rank" else ("embedding",)
    tools = ("tools",) if isinstance(template, str) and "tools" in template else ()
    return ("completion", *(projector.modalities if projector else ()), *tools)


POOLING = {1: "mean", 2: "cls", 3: "last", 4: "rank"}  # llama.cpp's llama_pooling_type


def pooling_of(info: GGUFInfo) -> str | None:
    """The pooling type an embedding model's GGUF names (``<arch>.pooling_type``), as
    llama.cpp loads it; None for a generative model (none, or 0)."""
    value = info.arch_value("pooling_type")
    return POOLING.get(value) if isinstance(value, int) else None


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int) else None


def modelfile_of(ref: str) -> Modelfile:
    """The Modelfile of a created or library model; for any other model, one that names it.

    A model without a recipe gets ``FROM`` itself, plus the GGUF's own chat template and
    licence when they can be read locally.
    """
    ref = names.canonical(ref)
    recipe = recipes.find(ref)
    if recipe is not None and store.load(ref) is None:
        mf = copy.deepcopy(recipe.modelfile)
        if mf.template is None:  # the template it runs with comes from its base
            try:
                resolved = resolve(ref)
            except NeedsPullError:  # a library model not pulled: its GGUF is not here
                return mf
            mf.template = chat_template(resolved, read_gguf(resolved.path).metadata)
        return mf
    mf = Modelfile(from_=ref)
    meta = read_gguf(resolve(ref).path).metadata
    template = meta.get("tokenizer.chat_template")
    if isinstance(template, str):
        mf.template = template
    if isinstance(meta.get("general.license"), str):
        mf.license = [meta["general.license"]]
    return mf
