"""The flags several commands share, each defined once: its name, its checks, its help.

A command takes one as the parameter's default, ``threads: int | None = options.threads()``.
Where a flag means a little less for one command (bench's ``--rpc`` is "as run does", serve's
``--kv-type`` is every model's), the command passes its own help, and the name and the
checks stay these. Imported by every command at start-up: typer alone, nothing heavier.
"""

from __future__ import annotations

import enum
from typing import Any

import typer

# ggml's GGML_MAX_N_THREADS, as localrun.backend.MAX_THREADS: not imported from there, since
# the backend's package would cost every command's start-up 2.6 ms.
MAX_THREADS = 512
MAX_PARALLEL = 64  # sequences of one model at once: run --batch's and serve's


class OutputFormat(str, enum.Enum):
    """run's --format."""

    text = "text"
    json = "json"


def parse_gpu_layers(value: str | None) -> str | None:
    """auto, all, or a whole number of layers: anything else is a usage error."""
    if value is None:
        return None
    value = value.strip().lower()
    if value in ("auto", "all") or (value.isdigit() and int(value) < 100_000):
        return value
    raise typer.BadParameter(f"'{value}' is not auto, all or a number of layers")


def gpu_layers_value(value: str | None) -> str | int | None:
    """--gpu-layers as the engine takes it: a number of layers, or auto or all."""
    return int(value) if value is not None and value.isdigit() else value


def model(help: str = "A model, as for run.") -> Any:
    return typer.Argument(..., help=help)


def threads(help: str = "CPU threads (default: the physical cores).") -> Any:
    return typer.Option(None, "--threads", min=1, max=MAX_THREADS, help=help)


def ctx(help: str = "Context size in tokens.", default: int | None = None, least: int = 1) -> Any:
    return typer.Option(default, "--ctx", min=least, help=help)


def gpu_layers(help: str = "auto, all or N. [default: auto]") -> Any:
    return typer.Option(None, "--gpu-layers", callback=parse_gpu_layers, help=help)


def parallel(help: str) -> Any:
    """Sequences of one model at once (bench's --parallel, a list of counts, is its own)."""
    return typer.Option(None, "--parallel", min=1, max=MAX_PARALLEL, help=help)


def kv_type(help: str, default: str | None = None) -> Any:
    """Checked with --flash-attn, by :func:`localrun.engine.options.check_kv`."""
    return typer.Option(default, "--kv-type", help=help)


def flash_attn(help: str, default: str | None = None) -> Any:
    return typer.Option(default, "--flash-attn", help=help)


def cpu_moe() -> Any:
    return typer.Option(
        False, "--cpu-moe", help="A mixture-of-experts model's experts in the CPU's memory, "
        "the rest of its layers on the GPU (llama.cpp's --cpu-moe).",
    )  # fmt: skip


def n_cpu_moe() -> Any:
    return typer.Option(
        None, "--n-cpu-moe", min=0, metavar="N",
        help="The experts of the first N layers in the CPU's memory (llama.cpp's --n-cpu-moe).",
    )  # fmt: skip


def experts_on_cpu(cpu_moe: bool, n_cpu_moe: int | None) -> int:
    """The load's ``cpu_moe``: -1 every layer's experts, N the first N layers', 0 none."""
    if cpu_moe and n_cpu_moe is not None:
        from localrun.errors import UsageError

        raise UsageError("--cpu-moe and --n-cpu-moe cannot go together", "give one of them")
    return -1 if cpu_moe else n_cpu_moe or 0


def rpc(
    help: str = "Split the model's layers with these RPC workers ('localrun worker' on other "
    "machines), by free memory.",
) -> Any:
    """Checked by :func:`localrun.engine.workers.parse_endpoints` when it is used."""
    return typer.Option(None, "--rpc", metavar="HOST:PORT,...", help=help)


def speculative(help: str) -> Any:
    """Checked by :func:`localrun.engine.options.run_options`, with --draft."""
    return typer.Option(None, "--speculative", help=help)


def draft(help: str) -> Any:
    return typer.Option(None, "--draft", metavar="MODEL", help=help)


def endpoint(help: str) -> Any:
    return typer.Option(None, "--endpoint", metavar="URL", help=help)


def as_json(help: str = "Print JSON.") -> Any:
    return typer.Option(False, "--json", help=help)


def penalty(flag: str, what: str) -> Any:
    """OpenAI's presence and frequency penalties (-2 to 2, as the parameters table says)."""
    return typer.Option(None, flag, min=-2.0, max=2.0, help=f"{what} (OpenAI's; 0: none).")
