"""The figures of an answer, named: what ``--verbose`` and ``/show stats`` print.

Data, not layout: the CLI aligns them. An answer made here names where it ran (threads,
layers, the KV cache) and its load; a remote engine's only what can be timed from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from localrun.engine.load import LoadedModel
    from localrun.engine.types import Stats


def speculative(stats: Stats) -> str:
    """How speculative decoding did: guesses kept, and answer tokens per decode step."""
    return (
        f"{stats.accepted} of {stats.drafted} guessed tokens kept ({stats.acceptance:.0%}), "
        f"{stats.tokens_per_pass:.2f} tokens a pass"
    )


def thinking(stats: Stats) -> list[tuple[str, str]]:
    """A thinking model's trace: its tokens (counted in the generated tokens too), and when
    the answer proper began, which a trace delays past the TTFT (none: no trace)."""
    if not stats.thinking_tokens:
        return []
    first = f"{stats.first_answer_s:.3f} s" if stats.first_answer_s else "- (no answer text)"
    return [
        ("thinking tokens", f"{stats.thinking_tokens} (of the generated tokens)"),
        ("time to first answer token", first),
    ]


def local_figures(stats: Stats, loaded: LoadedModel, threads: int | None) -> list[tuple[str, str]]:
    """The ``--verbose`` figures of an answer made here: every figure named plainly."""
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
    rows: list[tuple[str, str]] = [
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
        *thinking(stats),
        *([("speculative", speculative(stats))] if stats.drafted else []),
        ("decode", f"{stats.decode_s:.3f} s, {stats.decode_tokens_per_s:.1f} tok/s"),
        ("total time", f"{stats.total_s:.3f} s"),
        ("finish reason", stats.finish_reason),
    ]
    return rows


def images_text(stats: Stats) -> str:
    """The pictures of a prompt: how many, their tokens, the vision encoder's time."""
    pictures = "1 image" if stats.images == 1 else f"{stats.images} images"
    encoded = (
        f"encoded in {stats.image_encode_s:.3f} s"
        if stats.image_encode_s
        else "their cells kept from before"
    )
    return f"{pictures}, {stats.image_tokens} tokens, {encoded} (apart from prefill)"


def remote_figures(stats: Stats) -> list[tuple[str, str]]:
    """The ``--verbose`` figures of a remote engine's answer: what can be measured here."""
    rows: list[tuple[str, str]] = [
        ("mode", "remote engine (timed from here, over the network)"),
        ("prompt tokens", str(stats.prompt_tokens or "-")),
        ("TTFT", f"{stats.ttft_s:.3f} s"),
        ("generated tokens", str(stats.completion_tokens)),
        *thinking(stats),
        ("decode", f"{stats.decode_s:.3f} s, {stats.decode_tokens_per_s:.1f} tok/s"),
        ("total time", f"{stats.total_s:.3f} s"),
        ("finish reason", str(stats.finish_reason)),
    ]
    return rows
