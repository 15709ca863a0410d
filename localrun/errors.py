"""The one error hierarchy of localrun.

Every error a user can cause or meet is a :class:`LocalrunError` carrying a one-line
``message`` (what went wrong) and a ``hint`` (what to do next). The CLI's ``main()``
is the single place that catches them and turns them into a line on stderr and an
exit code.
"""

from __future__ import annotations


class LocalrunError(Exception):
    """Base class: a handled error with a message and an actionable hint."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(LocalrunError):
    """The command line asks for something impossible (exit code 2)."""

    exit_code = 2


class ModelNotFoundError(LocalrunError):
    """The named model is neither a file nor a known model name."""


class InvalidModelError(LocalrunError):
    """The model file exists but is not a loadable GGUF (bad magic, truncated...)."""


class ModelLoadError(LocalrunError):
    """llama.cpp refused to load a file that looked like a valid GGUF."""


class OutOfMemoryError(ModelLoadError):
    """A device had too little memory for the weights, the KV cache or the buffers."""


class DemoUnavailableError(LocalrunError):
    """The demo model package is not installed or produced a bad file."""


class PromptTooLongError(LocalrunError):
    """The prompt does not fit in the context window."""


class CacheError(LocalrunError):
    """localrun's own directories cannot be written."""


class GenerationError(LocalrunError):
    """llama.cpp failed while evaluating tokens."""
