"""``localrun run -n N``: llama.cpp's short form of ``--max-tokens``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def test_n_is_max_tokens(tiny_model: Path, cli: Any) -> None:
    done = cli(["run", str(tiny_model), "-n", "3", "--format", "json", "hi"])
    assert done.exit_code == 0, done.stderr
    stats = json.loads(done.stdout)["stats"]
    assert (stats["completion_tokens"], stats["finish_reason"]) == (3, "length")


def test_n_is_in_the_help(cli: Any) -> None:
    done = cli(["run", "--help"])
    assert "-n, --max-tokens" in done.stdout
