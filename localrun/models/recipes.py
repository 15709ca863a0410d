"""Named models made from Modelfiles: created ones (``localrun create``) and the library.

A recipe is a Modelfile under a name. Created recipes live in the data directory as
JSON (their FROM, ADAPTER and PROJECTOR paths made absolute when created); the library is the
``*.Modelfile`` files shipped with localrun, whose short names (``qwen2.5:0.5b``)
resolve for ``pull``, ``run`` and ``show``.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

from localrun import paths
from localrun.errors import InvalidModelError, LocalrunError, ModelfileError, UsageError
from localrun.files import write_atomic
from localrun.hub.refs import is_hub_ref
from localrun.models.gotemplate import is_go_template, to_jinja
from localrun.models.modelfile import Modelfile, parse

LIBRARY_DIR = Path(__file__).resolve().parent / "recipes"


@dataclass(frozen=True)
class Recipe:
    """A Modelfile with a name, ready to run."""

    name: str
    modelfile: Modelfile
    source: str  # "created" or "library"
    description: str = ""
    created_at: float = 0.0
    weights: str | None = None  # its own quantized file (create --quantize), not FROM's
    aliases: tuple[str, ...] = ()  # other names of a library recipe (``llama3.2``, ``:latest``)
    # Where a model pulled from a registry came from: registry, name, manifest digest, pulled_at.
    origin: dict[str, str | float] | None = None

    @property
    def jinja_template(self) -> str | None:
        """The TEMPLATE as Jinja (Ollama's Go templates are translated)."""
        template = self.modelfile.template
        if template is None:
            return None
        return to_jinja(template) if is_go_template(template) else template


def _created_dir() -> Path:
    return paths.data_dir() / "models"


def _created_file(name: str) -> Path | None:
    encoded = urllib.parse.quote(name, safe="")
    if not name or len(encoded) > 250:
        return None  # no created model can have that name: create validates it
    return _created_dir() / (encoded + ".json")


def _header(text: str, key: str) -> str:
    """A ``# key: value`` comment at the top of a library recipe."""
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        k, _, value = line[1:].partition(":")
        if k.strip().lower() == key:
            return value.strip()
    return ""


@cache
def library() -> dict[str, Recipe]:
    """The bundled recipes, by short name."""
    found = {}
    for path in sorted(LIBRARY_DIR.glob("*.Modelfile")):
        text = path.read_text()
        name = _header(text, "name") or path.stem
        aliases = tuple(a.strip() for a in _header(text, "aliases").split(",") if a.strip())
        description = _header(text, "description")
        found[name] = Recipe(name, parse(text, path.name), "library", description, aliases=aliases)
    return found


@cache
def aliases() -> dict[str, str]:
    """The library's other names (a family's default size, as Ollama's library has it)."""
    return {alias: r.name for r in library().values() for alias in r.aliases}


def _reserved(name: str) -> bool:
    """A name the library or a packaged model holds, in any of its spellings."""
    from localrun.models import names, packaged

    taken = {*library(), *aliases(), *packaged.names()}
    return any(spelling in taken for spelling in names.spellings(name))


def _read_created(path: Path) -> Recipe | None:
    """One created model's record, or None if it is missing or damaged."""
    try:
        data = json.loads(path.read_text())
        mf = parse(data["modelfile"], data["name"])
    except (OSError, ValueError, KeyError, ModelfileError):
        return None  # one damaged record must not hide the others
    return Recipe(
        data["name"], mf, "created", created_at=data.get("created_at", 0.0),
        weights=data.get("weights"), origin=data.get("origin"),
    )  # fmt: skip


def created() -> list[Recipe]:
    """Models made with ``localrun create``, by name."""
    folder = _created_dir()
    if not folder.is_dir():
        return []
    found = [r for p in folder.glob("*.json") if (r := _read_created(p)) is not None]
    return sorted(found, key=lambda r: r.name)


def find(name: str) -> Recipe | None:
    """The recipe called ``name``: a created model first, then the library."""
    path = _created_file(name)
    recipe = _read_created(path) if path is not None else None
    if recipe is not None and recipe.name == name:
        return recipe
    return library().get(name)


def _resolve_from(value: str, base_dir: Path) -> str:
    """FROM as it will be stored: a Hub reference or name as is, a path made absolute."""
    looks_like_path = value.startswith((".", "/", "~")) or value.lower().endswith(".gguf")
    if looks_like_path and not is_hub_ref(value):
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = (base_dir / path).resolve()
        if not path.exists():
            raise ModelfileError(f"FROM {value}: no file at {path}", "check the path in FROM")
        return str(path)
    return value


def _resolve_projector(value: str, instruction: str, base_dir: Path) -> str:
    """A projector's path as it will be stored (absolute), once the file is checked to be one:
    a GGUF whose architecture is ``clip``, as llama.cpp's converter writes projectors."""
    from localrun.gguf.reader import read_gguf

    if is_hub_ref(value):
        raise ModelfileError(
            f"{instruction} {value}: a projector must be a file here, not a Hub reference",
            "pull the model from its repository (its projector comes with it), or give a path",
        )
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (base_dir / path).resolve()
    if not path.is_file():
        raise ModelfileError(
            f"{instruction} {value}: no projector file at {path}",
            f"check the path in {instruction} (relative paths start at the Modelfile's folder)",
        )
    try:
        architecture = read_gguf(path).architecture
    except InvalidModelError as e:
        e.message = f"{instruction} {value}: {e.message}"  # which of the files it was
        raise
    if architecture != "clip":
        raise ModelfileError(
            f"{instruction} {value}: not a projector (its GGUF architecture is "
            f"'{architecture}', a projector's is 'clip')",
            "the first FROM names the model; a second FROM, or PROJECTOR, its mmproj-*.gguf",
        )
    return str(path)


def check_name_free(name: str) -> None:
    """Refuse a new name for pulled files that a created, library or the demo model has.

    Pulled and created models share one namespace: a name means one model.
    """
    if _reserved(name):
        raise UsageError(f"'{name}' is the name of a library model", "choose another name")
    from localrun.models import names

    for spelling in names.spellings(name):
        if find(spelling) is not None:
            raise UsageError(
                f"a created model is called '{spelling}'",
                f"choose another name, or: localrun rm {spelling}",
            )


def create(name: str, modelfile_path: Path) -> Recipe:
    """Record a model called ``name`` from a Modelfile (its base must exist or be pullable)."""
    from localrun.models.modelfile import read

    check_new_name(name)
    mf = read(modelfile_path)
    return record(name, mf, modelfile_path.resolve().parent)


def check_new_name(name: str) -> None:
    """Refuse a name a created model cannot take (invalid, a library model's, a pulled one's)."""
    from localrun.hub import store

    store.validate_name(name)
    if _reserved(name):
        raise UsageError(
            f"'{name}' is the name of a library model", "choose another name for yours"
        )
    if is_hub_ref(name):
        raise UsageError(
            f"'{name}' is a Hub reference, not a name for a created model",
            "choose a short name, such as my-model",
        )
    from localrun.models import names

    for spelling in names.spellings(name):
        if store.load(spelling) is not None:
            raise UsageError(
                f"a pulled model is called '{spelling}'",
                f"choose another name, or: localrun rm {spelling}",
            )
        if spelling != name and find(spelling) is not None:
            # NAME and NAME:latest are one name: a second record would shadow the first.
            raise UsageError(
                f"a created model is called '{spelling}'",
                f"create {spelling} to replace it, or: localrun rm {spelling}",
            )


def record(
    name: str, mf: Modelfile, base_dir: Path, origin: dict[str, str | float] | None = None
) -> Recipe:
    """Save ``mf`` as the created model ``name``; paths in it are read from ``base_dir``.
    ``origin`` says where a pulled one came from (:mod:`localrun.models.fromregistry`)."""
    check_new_name(name)
    mf.from_ = _resolve_from(mf.from_, base_dir)
    mf.adapters = [_resolve_from(a, base_dir) for a in mf.adapters]
    if mf.projector is not None:
        mf.projector = _resolve_projector(mf.projector, mf.projector_instruction, base_dir)
    if isinstance(draft := mf.parameters.get("draft"), str):
        mf.parameters["draft"] = _resolve_from(draft, base_dir)
    if mf.from_ == name:
        raise ModelfileError(f"{name} cannot be FROM itself", "name another model in FROM")
    recipe = Recipe(name, mf, "created", created_at=time.time(), origin=origin)
    recipe.jinja_template  # noqa: B018 - a template that cannot translate fails now, not at run
    replaced = find(name)
    _save(recipe)
    if replaced is not None and replaced.source == "created":
        release_uploads(uploads_of(replaced))
    return recipe


def _save(recipe: Recipe) -> None:
    path = _created_file(recipe.name)
    assert path is not None  # the name was validated
    record: dict[str, object] = {
        "name": recipe.name,
        "modelfile": recipe.modelfile.to_text(),
        "created_at": recipe.created_at,
    }
    if recipe.weights is not None:
        record["weights"] = recipe.weights
    if recipe.origin is not None:
        record["origin"] = recipe.origin
    try:
        write_atomic(path, json.dumps(record, indent=2))
    except OSError as e:
        raise LocalrunError(
            f"cannot save the model in {path.parent}: {e.strerror}",
            "set LOCALRUN_HOME to a writable directory",
        ) from None


def quantized_path(name: str, type_name: str) -> Path:
    """Where ``create --quantize`` writes a created model's own weights."""
    path = _created_file(name)
    assert path is not None  # the name was validated
    return path.with_name(f"{path.stem}.{type_name}.gguf")


def set_weights(recipe: Recipe, weights: Path) -> Recipe:
    """The created model ``recipe``, now answering with its own ``weights`` file."""
    updated = replace(recipe, weights=str(weights))
    _save(updated)
    return updated


def remove(name: str) -> int | None:
    """Forget a created model, its own quantized weights, and the uploaded files no other
    model uses; the bytes of uploads freed, None if there was no such model."""
    path = _created_file(name)
    if path is None or not path.exists():
        return None
    recipe = _read_created(path)
    if recipe is not None and recipe.weights is not None:
        Path(recipe.weights).unlink(missing_ok=True)
    path.unlink()
    return release_uploads(uploads_of(recipe)) if recipe is not None else 0


def uploads_of(recipe: Recipe) -> set[Path]:
    """The uploaded files (``store.name_upload``'s links) a created model is made of."""
    from localrun.hub import store

    mf = recipe.modelfile
    named = [mf.from_, *mf.adapters, mf.projector, mf.parameters.get("draft")]
    return {Path(p) for p in named if isinstance(p, str) and store.is_named_upload(Path(p))}


def release_uploads(links: set[Path], *, delete_blobs: bool = True) -> int:
    """Let go of the uploaded files in ``links`` that no created model names any more (a copy
    names its original's), and with ``delete_blobs`` of their blobs; the bytes freed."""
    from localrun.hub import store

    used = set().union(*(uploads_of(r) for r in created())) if links else set()
    return sum(store.release_upload(p, delete_blob=delete_blobs) for p in links - used)
