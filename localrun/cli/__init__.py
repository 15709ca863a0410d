"""The ``localrun`` command line: one small module per command, one catch in :func:`main`."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, TextIO

import typer

from localrun import __version__
from localrun.errors import LocalrunError, OutputError, from_os_error

app = typer.Typer(
    name="localrun",
    help="Run large language models on your own machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help, as click writes it: rich's formatting costs 0.1 s of start-up per call.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"localrun {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Run large language models on your own machine."""


# Registering the commands; each module adds itself to ``app``, and '--help' lists them in
# this order: run (and chat) first, where they have always been.
from localrun.cli import run  # noqa: E402,F401, I001
from localrun.cli import (  # noqa: E402,F401
    bench,
    cache,
    cp,
    create,
    doctor,
    embed,
    launch,
    library,
    listing,
    perplexity,
    pull,
    quantize,
    remote,
    rerank,
    rm,
    serve,
    show,
    tokenize,
    worker,
)


def _as_localrun_error(exc: BaseException) -> LocalrunError | None:
    if isinstance(exc, LocalrunError):
        return exc
    if isinstance(exc, typer.TyperException):  # click's exceptions, vendored by typer
        error = LocalrunError(exc.format_message(), _usage_hint(exc))
        error.exit_code = exc.exit_code
        return error
    if isinstance(exc, OSError):
        return from_os_error(exc)
    return None


def _usage_hint(exc: typer.TyperException) -> str:
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else "localrun"
    return f"see '{path} --help'"


def _print_error(error: LocalrunError) -> None:
    print(error.line(), file=sys.stderr)


class _ReaderGone(Exception):
    """stdout's reader went away (``| head``). Not an OSError: click turns EPIPE into exit 1."""


class _Output:
    """Standard output, with its write errors told apart from the cache's.

    A full disk under ``> file`` and a full cache directory are both ENOSPC; only the
    stream knows which. Everything else is the wrapped stream's.
    """

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def _fail(self, e: OSError | None) -> OutputError:
        if e is None:
            return OutputError(
                "standard output is closed", "redirect it to a file or to /dev/null instead"
            )
        return OutputError(
            f"cannot write to standard output: {e.strerror or e}",
            "check where the output goes: a full disk, or a device that refuses writes",
        )

    def write(self, text: str) -> int:
        if self._stream is None:
            raise self._fail(None)
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise _ReaderGone from None
        except OSError as e:
            raise self._fail(e) from None

    def flush(self) -> None:
        if self._stream is None:
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise _ReaderGone from None
        except OSError as e:
            raise self._fail(e) from None

    def isatty(self) -> bool:
        return self._stream is not None and self._stream.isatty()

    def __getattr__(self, name: str) -> Any:
        if self._stream is None:
            raise self._fail(None)
        return getattr(self._stream, name)


def _open_standard_fds() -> None:
    """Put /dev/null on closed standard descriptors (``localrun ... <&- >&-``).

    Otherwise the next file opened (the model, by llama.cpp) would take descriptor 1, and
    whatever C code prints would be written into it.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdin is None:  # closed: read as empty, so a prompt can still come as arguments
        sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the process


def _silence_stdout(stream: TextIO | None) -> None:
    """After stdout failed, send what is still buffered to /dev/null, quietly at exit."""
    if stream is not None and stream is sys.__stdout__:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 error, 2 usage, 130 interrupted)."""
    command = typer.main.get_command(app)
    debug = os.environ.get("LOCALRUN_DEBUG") == "1"
    _open_standard_fds()
    stdout = sys.stdout
    sys.stdout = _Output(stdout)
    try:
        result = command.main(args=argv, prog_name="localrun", standalone_mode=False)
        sys.stdout.flush()
    except (KeyboardInterrupt, typer.Abort):
        if debug:
            traceback.print_exc()
        return 130
    except (_ReaderGone, BrokenPipeError):
        # The reader went away (`localrun run ... | head`): not an error of ours.
        _silence_stdout(stdout)
        return 0
    except Exception as exc:
        # A bare `localrun` (or `localrun cache`) asks for help: give it, as a success.
        if type(exc).__name__ == "NoArgsIsHelpError" and isinstance(exc, typer.TyperException):
            print(exc.format_message())
            return 0
        if debug:
            traceback.print_exc()
        error = _as_localrun_error(exc)
        if error is None:
            error = LocalrunError(
                f"unexpected {type(exc).__name__}: {exc}",
                "this is a bug in localrun; run again with LOCALRUN_DEBUG=1 and report it",
            )
        _print_error(error)
        if isinstance(error, OutputError):
            _silence_stdout(stdout)
        return error.exit_code
    finally:
        if isinstance(sys.stdout, _Output):
            sys.stdout = stdout
    return result if isinstance(result, int) else 0


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())
