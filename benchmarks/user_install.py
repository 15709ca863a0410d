"""A user's install of this working tree, for benchmarks that time whole commands.

The README installs localrun for users with ``pip install .``, not as an editable install,
whose import hook adds 10-25 ms to every Python start-up here. This builds that regular
install in a throwaway virtual environment that borrows the running interpreter's packages
(the dependencies, as they are), so that nothing is downloaded but pip's build backend.
"""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def user_install(where: Path) -> Path:
    """Install this working tree, as users get it, into a new virtual environment; its bin/."""
    src = where / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "localrun", src / "localrun", ignore=shutil.ignore_patterns("__pycache__")
    )
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    target = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The dependencies come from this interpreter's site-packages, as they are.
    Path(target, "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            str(src),
        ],
        check=True,
    )
    return venv / "bin"
