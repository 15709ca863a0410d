"""JSON schema to GBNF, by the converter llama-cpp-python ships (llama.cpp's, in Python).

Importing it imports llama-cpp-python's whole package, which installs its own log callback:
llama.cpp's lines are taken back into localrun's log right after (see :mod:`.logs`).
"""

from __future__ import annotations

import json
from typing import Any

from localrun.backend.llamacpp import logs


def json_schema_to_gbnf(schema: dict[str, Any]) -> str:
    """The GBNF of ``schema`` (root rule ``root``); the converter's own exceptions pass."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf as convert

    logs.reclaim()
    return str(convert(json.dumps(schema)))
