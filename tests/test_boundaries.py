import subprocess
import sys


def test_engine_does_not_import_typer_or_rich() -> None:
    code = (
        "import sys, localrun.engine, localrun.backend.llamacpp, localrun.demo;"
        "bad = sorted(m for m in ('typer', 'rich', 'click') if m in sys.modules);"
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


HEAVY = ("llama_cpp", "huggingface_hub", "pydantic", "jinja2", "rich", "http.client")


def test_help_loads_nothing_heavy() -> None:
    # `localrun --help` must stay fast: each command imports what it needs when it runs.
    assert _loaded_by(["--help"], (*HEAVY, "localrun.store", "localrun.pull")) == []


def test_list_loads_nothing_heavy() -> None:
    # typer 0.29 pulled in pydantic for every option (0.1-0.2 s); the pin keeps it out.
    assert _loaded_by(["list"], HEAVY) == []
