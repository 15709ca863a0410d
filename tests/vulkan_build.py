"""llama-cpp-python built with llama.cpp's Vulkan backend, once, in its own environment.

The tests' second build of the pinned llama-cpp-python: from its sdist, with the flags of
``scripts/cmake_args.py --vulkan``, installed into a virtual environment of its own under
``~/.cache/localrun-tests/vulkan-<version>`` (the CPU build in the project's ``.venv`` is not
touched). That environment holds localrun's dependencies (installed again when
``pyproject.toml`` names others than it was given) but not localrun: the tests run this
clone's code in it through ``PYTHONPATH``. pip's wheel cache is kept out of it (the wheel
would otherwise be offered to the CPU install, which pip cannot tell apart).

Where the Vulkan headers, ``glslc`` or ``cmake`` are missing, or the build failed before,
:func:`vulkan_python` raises :class:`Unavailable` with one line saying so. A failed build is
not tried again for the same flags until its ``failed`` file is removed: it takes a long time.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "localrun-tests"
PACKAGES = "libvulkan-dev mesa-vulkan-drivers glslc spirv-headers vulkan-tools"  # Debian's
COMPAT = ROOT / "scripts" / "vulkan_compat"  # cmake_args.py --vulkan puts it on the path
HEADER_DIRS = (Path("/usr/include"), Path("/usr/local/include"))


class Unavailable(Exception):
    """The Vulkan build cannot be had here; the message is the one line that says why."""


def home(version: str | None = None) -> Path:
    """Where the build of this llama-cpp-python version lives."""
    return CACHE / f"vulkan-{version or importlib.metadata.version('llama-cpp-python')}"


def cmake_args() -> str:
    """CMAKE_ARGS for the build, as ``scripts/cmake_args.py --vulkan`` prints them."""
    script = ROOT / "scripts" / "cmake_args.py"
    out = subprocess.run([sys.executable, str(script), "--vulkan"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return out.strip()


def missing() -> str | None:
    """Why the Vulkan build cannot be made here (a tool or the headers), or None."""
    for tool in ("cmake", "glslc"):
        if shutil.which(tool) is None:
            return f"no {tool} for llama.cpp's Vulkan build (Debian: apt-get install {PACKAGES})"
    sdk = os.environ.get("VULKAN_SDK")
    dirs = [Path(sdk) / "include"] if sdk else []
    if not any((d / "vulkan" / "vulkan.hpp").exists() for d in [*dirs, *HEADER_DIRS]):
        return f"no Vulkan headers (vulkan/vulkan.hpp; Debian: apt-get install {PACKAGES})"
    return None


def vulkan_python() -> Path:
    """The Python of the environment that holds llama-cpp-python with Vulkan, built the first
    time it is asked for (tens of minutes on 2 cores; then it is kept)."""
    why = missing()
    if why:
        raise Unavailable(why)
    where = home()
    where.mkdir(parents=True, exist_ok=True)
    args = cmake_args()
    python = where / "venv" / "bin" / "python"
    with FileLock(str(where / "lock")):
        if _read(where / "built") == stamp(args) and python.exists():
            _keep_dependencies(where, python)
            return python
        if _read(where / "failed") == stamp(args):
            raise Unavailable(
                f"llama.cpp's Vulkan build failed before: see {where / 'build.log'} "
                f"(remove {where / 'failed'} to try again)"
            )
        (where / "built").unlink(missing_ok=True)
        try:
            _build(where, args)
        except subprocess.CalledProcessError:
            (where / "failed").write_text(stamp(args))
            raise Unavailable(
                f"llama.cpp's Vulkan build failed: {_last_error(where / 'build.log')} "
                f"(log: {where / 'build.log'})"
            ) from None
        (where / "built").write_text(stamp(args))
        (where / "dependencies").write_text("\n".join(_dependencies()))
    return python


def _keep_dependencies(where: Path, python: Path) -> None:
    """localrun's dependencies as pyproject.toml names them now, in a build made before one
    was added (the build itself is kept: its stamp is its flags)."""
    wanted = "\n".join(_dependencies())
    if _read(where / "dependencies") == wanted:
        return
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", *_dependencies()],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise Unavailable(f"cannot install localrun's dependencies into the Vulkan build: "
                          f"{(done.stderr.strip().splitlines() or ['?'])[-1][:300]}")  # fmt: skip
    (where / "dependencies").write_text(wanted)


def stamp(args: str) -> str:
    """What a build is known by: its flags, with this clone's path to the compatibility header
    taken out (a build made from another clone serves as well), and that header's digest."""
    header = (COMPAT / "vulkan" / "vulkan.hpp").read_bytes()
    digest = hashlib.sha256(header).hexdigest()[:16]
    return f"{args.replace(str(COMPAT), 'scripts/vulkan_compat')} vulkan.hpp:{digest}"


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def _build(where: Path, args: str) -> None:
    """venv, localrun's dependencies, the sdist, then llama-cpp-python built from it."""
    version = importlib.metadata.version("llama-cpp-python")
    python = where / "venv" / "bin" / "python"
    with (where / "build.log").open("w") as log:

        def step(*command: str, env: dict[str, str] | None = None) -> None:
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True,
                           env={**os.environ, **(env or {})})  # fmt: skip

        if not python.exists():
            step(sys.executable, "-m", "venv", str(where / "venv"))
        step(str(python), "-m", "pip", "install", "-q", *_dependencies(),
             "scikit-build-core>=0.9.2", "diskcache", "typing-extensions")  # fmt: skip
        source = _source(where, version, step)
        # Its own build folder: a build cut short goes on where it stopped, the next time.
        build = f"--config-settings=build-dir={where / 'build'}"
        jobs = str(os.cpu_count() or 2)
        step(str(python), "-m", "pip", "install", "--no-cache-dir", "--no-build-isolation",
             "--no-deps", "--force-reinstall", "-v", build, str(source),
             env={"CMAKE_ARGS": args, "CMAKE_BUILD_PARALLEL_LEVEL": jobs})  # fmt: skip


def _source(where: Path, version: str, step: Callable[..., None]) -> Path:
    """The pinned sdist, unpacked into the cache (a fixed path keeps the build folder valid)."""
    source = where / "src"
    if (source / "pyproject.toml").exists():
        return source
    download = where / "sdist"
    if not list(download.glob("llama_cpp_python-*.tar.gz")):
        step(sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
             "llama-cpp-python", f"llama-cpp-python=={version}", "-d", str(download),
             "-q")  # fmt: skip
    sdist = next(download.glob("llama_cpp_python-*.tar.gz"))
    prefix = sdist.name.removesuffix(".tar.gz") + "/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        for m in members:
            m.name = m.name[len(prefix) :]
        tar.extractall(source, members=[m for m in members if m.name], filter="data")
    return source


def _dependencies() -> list[str]:
    """localrun's own dependencies from pyproject.toml, less llama-cpp-python (built here)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
    with (ROOT / "pyproject.toml").open("rb") as f:
        deps: list[str] = tomllib.load(f)["project"]["dependencies"]
    return [d for d in deps if not d.startswith("llama-cpp-python")]


def _last_error(log: Path) -> str:
    """The first compiler or CMake error line of a build log, else its last line."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    for line in lines:
        if re.search(r"error:|CMake Error", line):
            return line.strip()[:300]
    return lines[-1].strip()[:300] if lines else "no log"
