"""The models here, and what each one is: the one answer that ``localrun list``, ``show``,
``cp`` and ``rm`` give, and the server's ``/api/tags``, ``/v1/models``, ``/api/copy`` and
``/api/delete`` with them.

Three kinds of model are here: pulled (files in the store), created (a Modelfile over another
model) and packaged (a GGUF that came with a Python package: ``demo`` once assembled,
``smollm2:135m``). The library's recipes are not here until they are pulled; ``show`` describes
them from their recipe. Everything is read from local files, never the network: call these
from a worker thread in the server.
"""

from __future__ import annotations

import copy as copying
import hashlib
from dataclasses import dataclass
from pathlib import Path

from localrun.errors import LocalrunError, ModelNotFoundError, UsageError
from localrun.hub import store
from localrun.hub.refs import is_hub_ref
from localrun.models import names, packaged, recipes
from localrun.models.demo import DEMO_NAME, cached_demo_path

PULLED = "pulled"
CREATED = "created"
PACKAGED = "packaged"


@dataclass(frozen=True)
class Entry:
    """One model here."""

    name: str
    source: str  # PULLED, CREATED or PACKAGED
    files: tuple[Path, ...]  # () when it cannot run as it is (see problem)
    size: int  # of its weights (a created model's are its base's, or its own quantization)
    digest: str  # sha256 of the weights; a created model's of its recipe and base
    quant: str | None
    modified: float
    parent: str = ""  # a created model's FROM
    problem: str | None = None  # why it cannot run ("is missing its files ...", "cannot run: ...")
    manifest: store.Manifest | None = None  # a pulled model's

    @property
    def id(self) -> str:
        """Twelve hex digits that tell models apart, as Ollama's ``list`` shows."""
        return self.digest[:12] if self.digest else "-"

    @property
    def path(self) -> Path | None:
        return self.files[0] if self.files else None


def _quant_of(path: Path, manifest: store.Manifest | None = None) -> str | None:
    """The quantization: a pulled model's manifest or its file's name says it; else the
    header does (which loads llama.cpp's bindings for the type names: 0.1-0.2 s of `list`)."""
    from localrun.gguf.reader import file_type_name, read_gguf
    from localrun.hub.refs import quant_of

    if manifest is not None and manifest.quant:
        return manifest.quant
    if (named := quant_of(path.name)) is not None:
        return named
    try:
        file_type = read_gguf(path).metadata.get("general.file_type")
    except LocalrunError:  # unreadable now: listed all the same, without it
        return None
    return file_type_name(int(file_type)) if file_type is not None else None


def _pulled(m: store.Manifest) -> Entry:
    missing = m.missing_files
    problem = (
        "is missing its files (deleted, or removed as corrupt); "
        f"repair it with: localrun pull {m.hub_ref}"
        if missing
        else None
    )
    files = () if missing else tuple(m.file_path(f) for f in m.files)
    return Entry(m.name, PULLED, files, m.size, m.files[0].sha256, m.quant, m.pulled_at,
                 problem=problem, manifest=m)  # fmt: skip


def _created(recipe: recipes.Recipe) -> Entry:
    from localrun.models.resolve import resolve

    mf = recipe.modelfile
    try:
        made = resolve(recipe.name)
    except LocalrunError as e:  # its base is not here (not pulled, or its file gone)
        what = hashlib.sha256(mf.to_text().encode()).hexdigest()
        problem = f"cannot run: {e.message}" + (f"; {e.hint}" if e.hint else "")
        return Entry(recipe.name, CREATED, (), 0, what, None, recipe.created_at, mf.from_,
                     problem=problem)  # fmt: skip
    weights = made.sha256 or ""
    what = hashlib.sha256((mf.to_text() + weights).encode()).hexdigest()
    try:
        size = sum(f.stat().st_size for f in made.files)
    except OSError as e:  # a file gone since it was resolved
        return Entry(recipe.name, CREATED, (), 0, what, None, recipe.created_at, mf.from_,
                     problem=f"cannot run: {e.filename}: {e.strerror}")  # fmt: skip
    parent = made.manifest.name if made.manifest and not recipe.weights else mf.from_
    quant = _quant_of(made.path, made.manifest if not recipe.weights else None)
    return Entry(recipe.name, CREATED, made.files, size, what, quant, recipe.created_at, parent)


def _packaged(name: str) -> Entry | None:
    """A packaged model whose GGUF is on disk (the demo's once assembled), else None."""
    if not packaged.installed(name):
        return None
    if name == DEMO_NAME:
        path = cached_demo_path()
        if path is None:
            return None
    else:
        try:
            path = packaged.model_path(name)
        except LocalrunError as e:  # damaged: listed, with what to do
            problem = f"cannot run: {e.message}; {e.hint}"
            return Entry(name, PACKAGED, (), 0, "", None, 0.0, problem=problem)
    stat = path.stat()
    return Entry(name, PACKAGED, (path,), stat.st_size, packaged.sha256(name), _quant_of(path),
                 stat.st_mtime)  # fmt: skip


def entries() -> list[Entry]:
    """Every model here, by name."""
    found = [_pulled(m) for m in store.all_manifests()]
    found += [_created(r) for r in recipes.created()]
    found += [e for name in packaged.names() if (e := _packaged(name)) is not None]
    return sorted(found, key=lambda e: e.name)


def find(ref: str) -> Entry | None:
    """The model here that ``ref`` names (``NAME`` and ``NAME:latest`` alike), or None."""
    name = names.canonical(ref)
    if name in packaged.names():
        return _packaged(name)
    manifest = store.load(name)
    if manifest is not None:
        return _pulled(manifest)
    recipe = recipes.find(name)
    if recipe is not None and recipe.source == CREATED:
        return _created(recipe)
    manifest = store.find(name)  # a Hub reference to a pulled model
    return _pulled(manifest) if manifest is not None else None


def require(ref: str) -> Entry:
    """The model here that ``ref`` names, or an error that says what is close."""
    entry = find(ref)
    if entry is not None:
        return entry
    name = names.canonical(ref)
    if name in packaged.names():
        package = packaged.package_of(name)
        hint = (f"run it once to put it here: localrun run {name}" if packaged.installed(name)
                else f"install it with: pip install {package}")  # fmt: skip
        raise ModelNotFoundError(f"'{name}' comes with {package} and is not here yet", hint)
    recipe = recipes.find(name)
    if recipe is not None and is_hub_ref(recipe.modelfile.from_):
        # A library model pulled: its files are the pulled model of its Hub reference.
        manifest = store.find(recipe.modelfile.from_)
        if manifest is not None:
            return _pulled(manifest)
    if recipe is not None:
        raise ModelNotFoundError(
            f"'{name}' is in the library but not pulled", f"get it with: localrun pull {name}"
        )
    raise ModelNotFoundError(f"model '{ref}' not found", names.did_you_mean(ref))


def copy(src: str, dst: str) -> str:
    """Another name for a model: the same files for a pulled one, the same recipe for a
    created or library one, a recipe FROM it for a packaged one. Returns the new name."""
    from localrun.models.modelfile import Modelfile

    store.validate_name(dst)
    recipes.check_name_free(dst)  # never over a created model (cp over /save's would lose it)
    for spelling in names.spellings(dst):
        if store.load(spelling) is not None:
            raise UsageError(f"a model called '{spelling}' already exists",
                             f"remove it first: localrun rm {spelling}")  # fmt: skip
    entry = find(src)
    name = names.canonical(src)
    recipe = recipes.find(name)
    if entry is None and (recipe is None or recipe.source != "library"):
        raise ModelNotFoundError(f"model '{src}' not found", names.did_you_mean(src))
    if entry is not None and entry.manifest is not None:
        return store.copy(entry.manifest, dst).name
    if recipe is not None:  # created, or from the library
        mf = copying.deepcopy(recipe.modelfile)
        if recipe.weights is not None:  # its own quantization: the copy stands on the original
            mf = Modelfile(from_=recipe.name)
    else:
        mf = Modelfile(from_=name)
    return recipes.record(dst, mf, Path.cwd()).name  # its paths are absolute already


def remove(ref: str) -> tuple[str, int | None]:
    """Remove a model: a pulled one's files no other model uses (the bytes freed are
    returned), or a created one's recipe (None: its base is kept), with the uploaded files
    it was made of that no other model uses (their bytes)."""
    entry = require(ref)
    if entry.source == PACKAGED:
        package = packaged.package_of(entry.name)
        raise UsageError(
            f"'{entry.name}' comes with the Python package {package}",
            f"remove it with: pip uninstall {package}",
        )
    if entry.source == CREATED:
        freed = recipes.remove(entry.name)  # uploads no other model uses: their bytes
        return entry.name, freed or None
    return entry.name, store.remove(entry.name)
