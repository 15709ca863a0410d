import subprocess
import sys


def test_engine_does_not_import_typer_or_rich() -> None:
    code = (
        "import sys, localrun.engine, localrun.backend.llamacpp.model, localrun.models.demo;"
        "import localrun.engine.batch, localrun.engine.load;"
        "bad = sorted(m for m in ('typer', 'rich', 'click', 'starlette', 'uvicorn')"
        " if m in sys.modules);"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _loaded_by(args: list[str], modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a ``localrun`` command line imports (it runs in-process here)."""
    code = (
        "import sys\n"
        "from localrun.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        f"print('loaded:', *(m for m in {modules!r} if m in sys.modules), file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stderr.splitlines()[-1].split()[1:]


HEAVY = ("llama_cpp", "huggingface_hub", "pydantic", "jinja2", "rich", "http.client",
         "starlette", "uvicorn", "numpy")  # fmt: skip


def test_help_loads_nothing_heavy() -> None:
    # `localrun --help` must stay fast: each command imports what it needs when it runs.
    assert _loaded_by(["--help"], (*HEAVY, "localrun.hub.store", "localrun.hub.pull")) == []


def test_list_loads_nothing_heavy() -> None:
    # typer 0.29 pulled in pydantic for every option (0.1-0.2 s); the pin keeps it out.
    assert _loaded_by(["list"], HEAVY) == []


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_backend_loads_llama_cpp_bindings_alone() -> None:
    # llama_cpp's __init__ imports the high-level Llama, numpy and the chat formats (0.13-0.3 s).
    code = (
        "import sys, localrun.backend.llamacpp.model as b;"
        "print(sorted(m for m in ('numpy', 'llama_cpp.llama', 'jinja2') if m in sys.modules),"
        " b.lc.llama_max_devices() >= 1)"
    )
    assert _run(code) == "[] True"


def test_rest_of_llama_cpp_still_imports_after_the_backend() -> None:
    code = (
        "import localrun.backend.llamacpp, localrun.backend.llamacpp.devices;"
        "from llama_cpp import Llama, __version__;"
        "import llama_cpp; print(Llama.__name__, __version__ == llama_cpp.__version__)"
    )
    assert _run(code) == "Llama True"


def test_bindings_leave_an_imported_llama_cpp_alone() -> None:
    code = (
        "import llama_cpp; full = llama_cpp;"
        "from localrun.backend.llamacpp import bindings; bindings.register();"
        "import llama_cpp; print(llama_cpp is full, type(llama_cpp).__name__)"
    )
    assert _run(code) == "True module"
