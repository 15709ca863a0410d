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


def test_cli_import_does_not_load_llama_cpp() -> None:
    # `localrun --help` must stay fast: the backend is imported only to run a model.
    code = "import sys, localrun.cli; print('llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
