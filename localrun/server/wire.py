"""What the APIs' converters read alike: the roles a message may have, a tool call sent back."""

from __future__ import annotations

from typing import Any

from localrun.errors import UsageError
from localrun.prompt.tools import ToolCall, new_call_id
from localrun.server import fields

# A message's role in the request, and the role the chat template gets.
ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
OPENAI_ROLES = ROLES | {"developer": "system"}  # OpenAI's newer name for the system prompt


def read_call(raw: Any, where: str, shape: str, *, openai: bool = False) -> ToolCall:
    """An earlier tool call, as a client sends it back in a message: ``{"function": {"name":
    ..., "arguments": ...}}``. ``shape`` is what the error says it must hold. ``openai``: the
    arguments may be a JSON string (OpenAI sends them so), and the call keeps its ``id``."""
    spec = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise UsageError(f"{where} must hold {shape}")
    at = f"{where}.function.arguments"
    arguments = spec.get("arguments") or {}
    if openai and isinstance(arguments, str):
        arguments = fields.json_text(arguments, at)
    if not isinstance(arguments, dict):
        raise UsageError(f"'{at}' must be an object")
    given = raw.get("id") if openai else None
    return ToolCall(
        spec["name"], arguments, given if isinstance(given, str) and given else new_call_id()
    )
