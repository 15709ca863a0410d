"""Real chat templates for the tests: the ``real_templates`` fixture.

The templates are the ones llama.cpp tests itself with (``models/templates`` in its
source). They are third-party text, so this repository does not carry them: the fixture
takes them from the sdist of the installed llama-cpp-python on PyPI, which vendors
llama.cpp, and caches them. ``LOCALRUN_TEST_TEMPLATES`` names a directory of them instead.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

TEMPLATES_ENV = "LOCALRUN_TEST_TEMPLATES"
TEMPLATES_IN_SDIST = ("vendor", "llama.cpp", "models", "templates")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_TEMPLATE_BYTES = 1 << 20


def _has_templates(directory: Path) -> bool:
    return directory.is_dir() and any(directory.glob("*.jinja"))


def _template_name(member: tarfile.TarInfo) -> str | None:
    """The file name of a chat template in the sdist, or None for any other member."""
    parts = member.name.split("/")
    if len(parts) != 2 + len(TEMPLATES_IN_SDIST) or tuple(parts[1:-1]) != TEMPLATES_IN_SDIST:
        return None
    top, name = parts[0], parts[-1]
    if not (SAFE_NAME.fullmatch(top) and SAFE_NAME.fullmatch(name) and name.endswith(".jinja")):
        return None
    if not member.isfile() or member.size > MAX_TEMPLATE_BYTES:  # no links, devices, giants
        return None
    return name


def _extract_templates(sdist: Path, into: Path) -> int:
    """Copy the sdist's chat templates into ``into``; return how many there were."""
    count = 0
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            name = _template_name(member)
            if name is None:
                continue
            source = tar.extractfile(member)
            if source is None:
                continue
            with source:
                (into / name).write_bytes(source.read())
            count += 1
    return count


def _fetch_templates(version: str, dest: Path) -> None:
    """Download the llama-cpp-python sdist and put its chat templates at ``dest``.

    pip still prepares the sdist's metadata (scikit-build-core, in an isolated build
    environment) but builds nothing. ``--no-binary`` names only llama-cpp-python: with
    ``:all:``, a machine without CMake would build the cmake and ninja packages from source.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        work = Path(tmp)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            "llama-cpp-python",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            f"llama-cpp-python=={version}",
            "-d",
            str(work / "sdist"),
        ]
        run = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if run.returncode != 0:
            tail = " | ".join(run.stderr.strip().splitlines()[-3:])
            raise OSError(f"pip download failed ({run.returncode}): {tail}")
        sdists = sorted((work / "sdist").glob("*.tar.gz"))
        if len(sdists) != 1:
            raise OSError(f"pip download left {len(sdists)} sdists, not one")
        extracted = work / "templates"
        extracted.mkdir()
        if _extract_templates(sdists[0], extracted) == 0:
            raise ValueError(f"{sdists[0].name} has no {'/'.join(TEMPLATES_IN_SDIST)}/*.jinja")
        try:
            extracted.rename(dest)  # atomic: a reader sees all the templates or none
        except OSError:
            if not _has_templates(dest):  # else another session put them there first
                raise


@pytest.fixture(scope="session")
def real_templates() -> Path:
    """A directory of real chat templates (``<org>-<model>.jinja``)."""
    given = os.environ.get(TEMPLATES_ENV)
    if given:
        if not _has_templates(Path(given)):
            pytest.fail(f"{TEMPLATES_ENV}={given} is not a directory of .jinja templates")
        return Path(given)
    version = importlib.metadata.version("llama-cpp-python")
    cache = Path.home() / ".cache" / "localrun-tests" / f"llama-cpp-python-{version}"
    templates = cache / "templates"
    if not _has_templates(templates):
        try:
            _fetch_templates(version, templates)
        except (OSError, subprocess.SubprocessError, tarfile.TarError, ValueError) as e:
            reason = f"no real chat templates from the llama-cpp-python {version} sdist: {e}"
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
    return templates
