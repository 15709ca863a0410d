from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def shell_blocks(text: str) -> list[str]:
    blocks = text.split("```sh\n")[1:]
    return [b.split("```", 1)[0].strip() for b in blocks]


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second() -> None:
    readme = (ROOT / "README.md").read_text()
    first, second = shell_blocks(readme)[:2]
    # The first command asks the packaged chat model, which answers rather than continues.
    assert "localrun run smollm2:135m" in first and ".[demo]" in first
    assert second.endswith("pytest")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert second in ci
