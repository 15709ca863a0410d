"""The engine: load a model and answer conversations with honest statistics.

The library behind ``localrun run``; it never imports typer or rich. Resolving a model's
name is :mod:`localrun.models.resolve`; turning messages into tokens is
:mod:`localrun.prompt.build`.
"""

from localrun.engine.answerer import generate, generate_tokens
from localrun.engine.load import LoadedModel, default_parallel, load_model, speculate
from localrun.engine.options import FLAG_NAMES, RunOptions, run_options
from localrun.engine.output import StopMatcher
from localrun.engine.stream import check_fits
from localrun.engine.types import CHAT, COMPLETION, Event, Finished, FinishReason, FirstToken
from localrun.engine.workers import parse_endpoints

# isort: split
from localrun.engine.types import PrefillProgress, PromptEvaluated, Request, Stats, TextDelta
from localrun.prompt.template import Message

__all__ = [
    "CHAT",
    "COMPLETION",
    "FLAG_NAMES",
    "Event",
    "FinishReason",
    "Finished",
    "FirstToken",
    "LoadedModel",
    "Message",
    "PrefillProgress",
    "PromptEvaluated",
    "Request",
    "RunOptions",
    "Stats",
    "StopMatcher",
    "TextDelta",
    "check_fits",
    "default_parallel",
    "generate",
    "generate_tokens",
    "load_model",
    "parse_endpoints",
    "run_options",
    "speculate",
]
