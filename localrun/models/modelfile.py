"""Modelfiles: Ollama's recipe format (FROM, PARAMETER, SYSTEM, TEMPLATE, MESSAGE, ...).

Parsing and writing back. Instructions are case-insensitive, ``#`` starts a comment
line, values may be bare, "quoted", or in triple quotes spanning lines. Every error
names the line and what is wrong with it.

A vision model's projector is named as Ollama's Modelfiles name it, by a second FROM, or by
localrun's ``PROJECTOR``; written back, it is a ``PROJECTOR`` line. That the file is a
projector (GGUF architecture ``clip``) is checked when a model is created from it
(:func:`localrun.models.recipes.record`): parsing reads no files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from localrun.errors import ModelfileError
from localrun.models.parameters import BY_NAME, TABLE, check

INSTRUCTIONS = (
    "FROM", "PARAMETER", "SYSTEM", "TEMPLATE", "MESSAGE", "ADAPTER", "PROJECTOR", "LICENSE",
)  # fmt: skip
ROLES = ("system", "user", "assistant")

# Parameter -> type; the same settings as the run flags, under Ollama's names (one table).
PARAMETERS: dict[str, type] = {p.name: p.kind for p in TABLE}
SPECULATIVE = BY_NAME["speculative"].choices
CHOICES = {p.name: p.choices for p in TABLE if p.choices}
check_parameter = check  # ValueError out of the range: the name the readers know


@dataclass
class Modelfile:
    """A parsed Modelfile."""

    from_: str = ""
    parameters: dict[str, float | int | str] = field(default_factory=dict)
    stop: list[str] = field(default_factory=list)
    system: str | None = None
    template: str | None = None
    messages: list[tuple[str, str]] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    projector: str | None = None  # a vision model's projector (mmproj GGUF)
    # Which instruction named the projector ("FROM" or "PROJECTOR"): error messages say it.
    projector_instruction: str = field(default="PROJECTOR", compare=False)

    def to_text(self) -> str:
        """The Modelfile as text; parsing it gives this Modelfile back."""
        lines = [f"FROM {self.from_}"]
        for name, value in self.parameters.items():
            lines.append(f"PARAMETER {name} {_number_text(value)}")
        lines += [f"PARAMETER stop {_quote(s)}" for s in self.stop]
        lines += [f"ADAPTER {_quote(a)}" for a in self.adapters]
        if self.projector is not None:
            lines.append(f"PROJECTOR {_quote(self.projector)}")
        if self.system is not None:
            lines.append(f"SYSTEM {_quote(self.system)}")
        if self.template is not None:
            lines.append(f"TEMPLATE {_quote(self.template)}")
        lines += [f"MESSAGE {role} {_quote(text)}" for role, text in self.messages]
        lines += [f"LICENSE {_quote(text)}" for text in self.license]
        return "\n".join(lines) + "\n"


def _number_text(value: float | int | str) -> str:
    return repr(value) if isinstance(value, float) else str(value)


# What str.splitlines breaks lines at, besides "\n": inside a value it must be escaped, or the
# parser would read what follows as another instruction.
_OTHER_BREAKS = "\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def _quote(text: str) -> str:
    """A value written so that the parser reads exactly ``text`` back."""
    if any(c in text for c in _OTHER_BREAKS):
        return json.dumps(text)  # escaped: one line
    if '"""' not in text and ("\n" in text or '"' in text or text != text.strip() or not text):
        return f'"""{text}"""'
    if '"""' in text:
        return json.dumps(text)  # a quoted string with escapes
    return text if " " not in text and "#" not in text else json.dumps(text)


_LINE = re.compile(r"^\s*([A-Za-z]+)(?:\s+(.*))?$", re.DOTALL)


def parse(text: str, source: str = "Modelfile") -> Modelfile:
    """Parse a Modelfile; ``source`` names it in errors."""
    mf = Modelfile()
    lines = text.splitlines()
    projector_line = 0  # where the projector was named, for the error on a second one
    i = 0
    while i < len(lines):
        number = i + 1
        raw = lines[i]
        i += 1
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        match = _LINE.match(raw)
        if not match:
            raise _error(source, number, f"cannot read '{raw.strip()}'", "write INSTRUCTION value")
        word, rest = match.group(1).upper(), (match.group(2) or "").strip()
        if word not in INSTRUCTIONS:
            raise _error(
                source,
                number,
                f"unknown instruction '{match.group(1)}'",
                "use one of " + ", ".join(INSTRUCTIONS),
            )
        if word in ("PARAMETER", "MESSAGE"):
            key, _, rest = rest.partition(" ")
            value, i = _value(rest.strip(), lines, i, source, number)
            if word == "PARAMETER":
                _parameter(mf, key, value, source, number)
            else:
                _message(mf, key, value, source, number)
            continue
        value, i = _value(rest, lines, i, source, number)
        projector_line = _instruction(mf, word, value, source, number, projector_line)
    if not mf.from_:
        raise ModelfileError(
            f"{source} has no FROM instruction", "start it with FROM and the base model"
        )
    return mf


def _instruction(
    mf: Modelfile, word: str, value: str, source: str, number: int, projector_line: int
) -> int:
    """An instruction of one value (FROM, PROJECTOR, SYSTEM...), into ``mf``. Returns the line
    that names the projector (0: none yet)."""
    if word == "FROM" and not value:
        raise _error(source, number, "FROM needs a model", "FROM hf.co/ORG/REPO or a path")
    if word == "PROJECTOR" and not value:
        raise _error(source, number, "PROJECTOR needs a file", "PROJECTOR ./mmproj-F16.gguf")
    if word == "PROJECTOR" or (word == "FROM" and mf.from_):
        # A later FROM is the projector, as in Ollama's Modelfiles.
        if projector_line:
            raise _error(
                source,
                number,
                f"a second projector (line {projector_line} names one already)",
                "a model takes one projector: keep one PROJECTOR, or one FROM after the first",
            )
        mf.projector, mf.projector_instruction = value, word
        return number
    if word == "FROM":
        mf.from_ = value
    elif word == "SYSTEM":
        mf.system = value
    elif word == "TEMPLATE":
        mf.template = value
    elif word == "ADAPTER":
        mf.adapters.append(value)
    else:
        mf.license.append(value)
    return projector_line


def _value(rest: str, lines: list[str], i: int, source: str, number: int) -> tuple[str, int]:
    """The value after an instruction: bare, "quoted", or in triple quotes over lines."""
    if rest.startswith('"""'):
        body = rest[3:]
        if body.endswith('"""') and len(body) >= 3:
            return body[:-3], i
        parts = [body]
        while i < len(lines):
            line = lines[i]
            i += 1
            if line.rstrip().endswith('"""'):
                parts.append(line.rstrip()[:-3])
                return "\n".join(parts), i
            parts.append(line)
        raise _error(
            source, number, 'the """ opened here is never closed', 'end the value with """'
        )
    if rest.startswith('"'):
        try:
            value, end = json.JSONDecoder().raw_decode(rest)
        except ValueError:
            raise _error(
                source, number, "an unterminated quoted value", 'close it with "'
            ) from None
        if rest[end:].strip():
            raise _error(source, number, "text after the quoted value", "remove it or quote all")
        return str(value), i
    return rest, i


def _message(mf: Modelfile, key: str, value: str, source: str, number: int) -> None:
    role = key.lower()
    if role not in ROLES:
        raise _error(
            source, number, f"unknown MESSAGE role '{key}'", "use system, user or assistant"
        )
    mf.messages.append((role, value))


def _parameter(mf: Modelfile, key: str, value: str, source: str, number: int) -> None:
    name = key.lower()
    if name not in PARAMETERS:
        raise _error(
            source,
            number,
            f"unknown parameter '{key}'",
            "parameters: " + ", ".join(sorted(PARAMETERS)),
        )
    if name == "stop":
        mf.stop.append(value)
        return
    try:
        mf.parameters[name] = coerce_parameter(name, value)
    except ValueError as e:
        example = BY_NAME[name].example
        raise _error(source, number, str(e), f"PARAMETER {name} {example}") from None


def coerce_parameter(name: str, value: str) -> float | int | str:
    """A parameter's value, typed and checked (ValueError says what is wrong)."""
    kind = PARAMETERS[name]
    if kind is str:
        if name in CHOICES and value not in CHOICES[name]:
            choices = ", ".join(CHOICES[name])
            raise ValueError(f"{name} must be one of {choices}, not '{value}'")
        if not value.strip():
            raise ValueError(f"{name} needs a value")
        return value
    try:
        parsed: float | int = kind(value)
    except ValueError:
        article = "a whole number" if kind is int else "a number"
        raise ValueError(f"{name} must be {article}, not '{value}'") from None
    check_parameter(name, parsed)
    return parsed


def _error(source: str, number: int, what: str, hint: str) -> ModelfileError:
    return ModelfileError(f"{source}, line {number}: {what}", hint)


# Real Modelfiles are 1-100 KB, a license their longest part; this holds a template at its
# cap (MAX_TEMPLATE_CHARS, a million characters of up to 4 bytes) with room to spare.
MAX_MODELFILE_BYTES = 10 * 1000**2


def read(path: Path) -> Modelfile:
    """Parse the Modelfile at ``path`` (a regular file of at most MAX_MODELFILE_BYTES)."""
    from localrun.files import read_capped

    if path.is_dir():
        raise ModelfileError(
            f"{path} is a directory, not a Modelfile", "give the Modelfile's own path with -f"
        )
    if not path.exists():
        raise ModelfileError(f"no Modelfile at {path}", "give its path with -f")
    # A device or a FIFO is refused unread, and the cap is kept while reading (/dev/zero).
    data = read_capped(
        path, MAX_MODELFILE_BYTES, "the Modelfile", "name a Modelfile (text) with -f"
    )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise ModelfileError(
            f"{path} is a binary file, not a Modelfile",
            "a Modelfile is text: FROM, PARAMETER, SYSTEM... (give a .gguf file to FROM)",
        )
    return parse(text, str(path))
