"""The sandboxed Jinja environment chat templates render in (imported only to render)."""

from __future__ import annotations

import datetime
from functools import cache
from typing import NoReturn

import jinja2
import jinja2.ext
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``, as transformers defines it.

    Templates mark the assistant's text with it (for training masks); rendering a prompt,
    the block is just its body.
    """

    tags = {"generation"}  # noqa: RUF012 (jinja2 declares it without ClassVar)

    def parse(self, parser: Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


@cache
def environment() -> ImmutableSandboxedEnvironment:
    """One environment for every render: compiling it again costs time at each turn."""
    # As transformers renders templates: `break` and `continue`, and `generation` blocks.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols, _GenerationBlock],
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env
