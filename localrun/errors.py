"""The one error hierarchy of localrun.

Every error a user can cause or meet is a :class:`LocalrunError` carrying a one-line
``message`` (what went wrong) and a ``hint`` (what to do next), and knowing how it ends a
command (``exit_code``) and an HTTP request (``http_status``). The CLI's ``main()`` is the
single place that catches them and turns them into a line on stderr and an exit code.
"""

from __future__ import annotations

import errno


class LocalrunError(Exception):
    """Base class: a handled error with a message and an actionable hint."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        """The error as the CLI prints it: one line, the message then the hint."""
        text = f"Error: {self.message.rstrip('.')}"
        return f"{text}. Hint: {self.hint}" if self.hint else text


class UsageError(LocalrunError):
    """The command line (or a request) asks for something impossible."""

    exit_code = 2
    http_status = 400


class NotTextError(UsageError):
    """Bytes that are not UTF-8 text where text belongs (a batch line: on stdin that line's
    error, in a file the whole file's)."""


# -- models and their files ------------------------------------------------------------------


class ModelNotFoundError(LocalrunError):
    """The named model is neither a file nor a known model name."""

    http_status = 404


class NotPulledError(LocalrunError):
    """The named model is not in the local store."""

    http_status = 404


class NeedsPullError(LocalrunError):
    """The model is on the Hub and not (wholly) in the store: ``ref`` pulls it."""

    http_status = 404

    def __init__(self, ref: str, name: str) -> None:
        super().__init__(f"model '{name}' is not pulled", f"pull it with: localrun pull {ref}")
        self.ref = ref


class BrokenModelError(LocalrunError):
    """A pulled model's files are no longer all in the cache."""

    http_status = 500


class InvalidModelError(LocalrunError):
    """The model file exists but is not a loadable GGUF (bad magic, truncated...)."""

    http_status = 422


class HeaderTruncated(InvalidModelError):
    """The bytes end inside a GGUF header: a file cut short, or a remote prefix too short."""


class ModelfileError(LocalrunError):
    """A Modelfile that cannot be used as written."""

    http_status = 400


class GoTemplateError(ModelfileError):
    """A Go template uses a form localrun does not translate."""


class DemoUnavailableError(LocalrunError):
    """The demo model package is not installed or produced a bad file."""

    http_status = 503


# -- loading and generating ------------------------------------------------------------------


class WorkerError(LocalrunError):
    """An RPC worker (``localrun worker``) cannot be reached, or cannot be used."""

    http_status = 503


class ModelLoadError(LocalrunError):
    """llama.cpp refused to load a file that looked like a valid GGUF."""

    http_status = 500


class OutOfMemoryError(ModelLoadError):
    """A device had too little memory for the weights, the KV cache or the buffers."""

    http_status = 507


class NoVisionError(UsageError):
    """Pictures for a model that reads none: no projector was loaded beside it."""

    def __init__(
        self,
        model: str = "this model",
        hint: str = "use a vision model (its Hub repository has an mmproj file), or name its "
        "projector with PROJECTOR in a Modelfile",
    ) -> None:
        super().__init__(f"{model} reads no images: it has no projector (mmproj)", hint)


class PromptTooLongError(LocalrunError):
    """The prompt does not fit in the context window."""

    http_status = 400


class TemplateError(LocalrunError):
    """The chat template could not be rendered."""

    http_status = 500


class GenerationError(LocalrunError):
    """llama.cpp failed while evaluating tokens."""

    http_status = 500


# -- the Hub and the disk --------------------------------------------------------------------


class QuantNotFoundError(LocalrunError):
    """The repository has no GGUF file with the asked-for quantization."""

    http_status = 404


class NotGGUFError(LocalrunError):
    """The repository or file is not a GGUF model."""

    http_status = 400


class HubError(LocalrunError):
    """The Hub refused or failed a request."""

    http_status = 502


class RegistryError(LocalrunError):
    """An Ollama-style registry refused or failed a request, or sent what is not a model's."""

    http_status = 502


class NetworkError(LocalrunError):
    """The Hub (or a registry) cannot be reached."""

    http_status = 503


class CorruptDownloadError(LocalrunError):
    """A downloaded file does not match the sha256 the Hub publishes."""

    http_status = 502


class InsufficientSpaceError(LocalrunError):
    """The disk (or memory) cannot hold the model."""

    http_status = 507


class CacheError(LocalrunError):
    """localrun's own directories cannot be written."""

    http_status = 500


class OutputError(LocalrunError):
    """Standard output cannot be written (closed, a full disk, /dev/full)."""

    http_status = 500


# What the operating system's refusals mean to a user, and what to do about them.
_OS_ERRORS: dict[int, tuple[type[LocalrunError], str, str]] = {
    errno.ENOSPC: (InsufficientSpaceError, "no space left on the device", "free some disk space"),
    errno.EROFS: (
        CacheError,
        "the file system is read-only",
        "set LOCALRUN_HOME to a writable directory",
    ),
    errno.EACCES: (CacheError, "permission denied", "check the permissions, or set LOCALRUN_HOME"),
    errno.EPERM: (
        CacheError,
        "operation not permitted",
        "check the permissions, or set LOCALRUN_HOME",
    ),
}


def from_os_error(e: OSError, *, during: str = "", then: str = "") -> LocalrunError | None:
    """The :class:`LocalrunError` for a full, read-only or forbidden disk, else None.

    ``during`` says what was being done (" while pulling X"); ``then`` ends the hint.
    """
    entry = _OS_ERRORS.get(e.errno or 0)
    if entry is None:
        return None
    cls, what, hint = entry
    where = f": {e.filename}" if e.filename else ""
    return cls(f"{what}{where}{during}", hint + then)


# -- the server ------------------------------------------------------------------------------


class UnauthorizedError(LocalrunError):
    """A request to a server that needs an API key came without the right one."""

    http_status = 401


class ForbiddenError(LocalrunError):
    """A request the server's settings refuse: a Host, an Origin, model management."""

    http_status = 403


class PayloadTooLargeError(LocalrunError):
    """A request body over the server's limit."""

    http_status = 413


class BusyError(LocalrunError):
    """The server's queue for a model is full: the client should retry later."""

    http_status = 503

    def __init__(self, message: str, hint: str | None = None, retry_after: int = 1) -> None:
        super().__init__(message, hint)
        self.retry_after = retry_after
