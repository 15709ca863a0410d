"""What the APIs' converters read alike: the roles a message may have, a tool call sent back,
a picture sent as an image_url."""

from __future__ import annotations

from typing import Any

from localrun.errors import UsageError
from localrun.images import Image, fetch_image, image_from_data_url
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


def image_url(value: Any, where: str, remote: bool) -> Image:
    """An image_url part's picture: a data URL, or (with --allow-remote-images) fetched."""
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise UsageError(f"{where}.image_url needs a url", "send data:image/png;base64,...")
    if url.startswith("data:"):
        return image_from_data_url(url, where)
    if url.startswith(("http://", "https://")):
        if not remote:
            raise UsageError(
                f"{where}: this server does not fetch images from URLs",
                "send the picture as a data URL, or start the server with --allow-remote-images",
            )
        return fetch_image(url, where)
    raise UsageError(f"{where}.image_url is not a data: or http(s) URL")
