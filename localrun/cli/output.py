"""Plain-text rendering shared by the commands."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from localrun.engine import LoadedModel, Stats


def speculative(stats: Stats) -> str:
    """How speculative decoding did: guesses kept, and answer tokens per decode step."""
    return (
        f"{stats.accepted} of {stats.drafted} guessed tokens kept ({stats.acceptance:.0%}), "
        f"{stats.tokens_per_pass:.2f} tokens a pass"
    )


def format_stats(stats: Stats, loaded: LoadedModel, threads: int | None = None) -> str:
    """The ``--verbose`` block: every figure named plainly, one per line."""
    mode = loaded.mode
    mode_text = (
        "chat (the model's chat template)"
        if mode == "chat"
        else "completion (the model has no chat template)"
    )
    evaluated = (
        f" ({stats.prompt_evaluated} evaluated)"
        if stats.prompt_evaluated != stats.prompt_tokens
        else ""
    )
    if stats.prompt_from_disk:
        evaluated = (
            f" ({stats.prompt_evaluated} evaluated, {stats.prompt_from_disk} read back from "
            "the prompt cache)"
        )
    rows = [
        ("mode", mode_text),
        ("threads", str(threads) if threads else "-"),
        ("layers", loaded.plan.describe()),
        *(
            [("KV cache", f"{loaded.kv_cache}, {loaded.model.n_ctx} cells")]
            if loaded.kv_cache
            else []
        ),
        *([("projector", loaded.projector.name)] if loaded.projector is not None else []),
        # A chat's later answers did not wait for the load: the first one did.
        (
            "load time",
            f"{stats.load_s:.3f} s" if stats.load_s else "- (loaded for an earlier answer)",
        ),
        ("prompt tokens", f"{stats.prompt_tokens}{evaluated}"),
        *([("images", images_text(stats))] if stats.images else []),
        ("prefill", f"{stats.prefill_s:.3f} s, {stats.prefill_tokens_per_s:.1f} tok/s"),
        ("TTFT", f"{stats.ttft_s:.3f} s"),
        ("generated tokens", str(stats.completion_tokens)),
        *([("speculative", speculative(stats))] if stats.drafted else []),
        ("decode", f"{stats.decode_s:.3f} s, {stats.decode_tokens_per_s:.1f} tok/s"),
        ("total time", f"{stats.total_s:.3f} s"),
        ("finish reason", stats.finish_reason),
    ]
    return _aligned(rows)


def images_text(stats: Stats) -> str:
    """The pictures of a prompt: how many, their tokens, the vision encoder's time."""
    pictures = "1 image" if stats.images == 1 else f"{stats.images} images"
    encoded = (
        f"encoded in {stats.image_encode_s:.3f} s"
        if stats.image_encode_s
        else "their cells kept from before"
    )
    return f"{pictures}, {stats.image_tokens} tokens, {encoded} (apart from prefill)"


def format_remote_stats(stats: Stats) -> str:
    """The ``--verbose`` block of a remote engine's answer: what can be measured from here."""
    rows = [
        ("mode", "remote engine (timed from here, over the network)"),
        ("prompt tokens", str(stats.prompt_tokens or "-")),
        ("TTFT", f"{stats.ttft_s:.3f} s"),
        ("generated tokens", str(stats.completion_tokens)),
        ("decode", f"{stats.decode_s:.3f} s, {stats.decode_tokens_per_s:.1f} tok/s"),
        ("total time", f"{stats.total_s:.3f} s"),
        ("finish reason", stats.finish_reason),
    ]
    return _aligned(rows)


def _aligned(rows: Sequence[tuple[str, object]]) -> str:
    """``name: value`` lines, the values in one column."""
    width = max(len(name) for name, _ in rows) + 1
    return "\n".join(f"{name + ':':<{width}} {value}" for name, value in rows)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, separated by three spaces, like `ollama list`."""
    everything = [header, *rows]
    widths = [max(len(r[i]) for r in everything) for i in range(len(header))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in everything]
    return "\n".join(line.rstrip() for line in lines)
