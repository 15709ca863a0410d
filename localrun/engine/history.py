"""A chat kept in a JSON file (``/save FILE``, ``/load FILE``): its format, written and read.

The file holds what a chat needs to go on: the model's name, the system prompt, the
generation settings and the messages (pictures in base64, tool calls as templates read
them). The session decides what goes in and checks what comes back; this module only
writes and reads the file.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localrun.errors import LocalrunError
from localrun.files import write_atomic
from localrun.images import image_from_base64
from localrun.prompt.template import Message
from localrun.prompt.tools import ToolCall

HISTORY_FORMAT = "localrun-chat/1"


@dataclass(frozen=True)
class SavedChat:
    """What :func:`read_history` read: the conversation, and the settings as written."""

    messages: list[Message]
    system: str | None
    parameters: Any  # checked by the session, as /set parameter checks them


def write_history(
    path: Path,
    model: str,
    system: str | None,
    parameters: dict[str, object],
    messages: list[Message],
) -> None:
    """Write a conversation as JSON (atomically: a crash leaves the old file whole)."""
    data = {
        "format": HISTORY_FORMAT,
        "model": model,
        "system": system,
        "parameters": parameters,
        "messages": [_saved(m) for m in messages],
    }
    path = path.expanduser()
    if path.is_dir():
        raise LocalrunError(f"{path} is a directory", "give a file name to save to")
    try:
        write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    except OSError as e:
        raise LocalrunError(f"cannot save to {path}: {e.strerror}", "choose another file") from None


def read_history(path: Path) -> SavedChat:
    """Read a conversation written by :func:`write_history`."""
    path = path.expanduser()
    try:
        data = json.loads(path.read_text())
        messages = [_saved_message(m) for m in data["messages"]]
        system = data.get("system")
        params = data.get("parameters", {})
    except FileNotFoundError:
        raise LocalrunError(f"no such file: {path}", "give the path of a saved chat") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise LocalrunError(
            f"{path} is not a saved localrun chat ({type(e).__name__})",
            "load a file written by /save",
        ) from None
    return SavedChat(messages, system if isinstance(system, str) else None, params)


def _saved_message(m: dict[str, Any]) -> Message:
    """A message as :func:`write_history` wrote it (its calls as templates read them)."""
    calls = tuple(
        ToolCall(str(c["function"]["name"]), dict(c["function"]["arguments"]), str(c["id"]))
        for c in m.get("tool_calls") or ()
    )
    tool_call_id, name = m.get("tool_call_id"), m.get("name")
    images = tuple(
        image_from_base64(str(data), f"the saved chat's image {i + 1}")
        for i, data in enumerate(m.get("images") or ())
    )
    return Message(
        str(m["role"]),
        str(m["content"]),
        calls,
        str(tool_call_id) if tool_call_id is not None else None,
        str(name) if name is not None else None,
        images,
    )


def _saved(m: Message) -> dict[str, Any]:
    """A message as :func:`write_history` writes it: its pictures in base64, as Ollama's
    API sends them."""
    out = m.as_template()
    if m.images:
        out["images"] = [base64.b64encode(image.data).decode() for image in m.images]
    return out
