"""``localrun tokenize MODEL [TEXT]``: a text's tokens (or their count) in a model's
vocabulary, read without loading the model's weights."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import typer

from localrun.cli import app, options

if TYPE_CHECKING:
    from localrun.engine.tokens import Tokenized


@app.command()
def tokenize(
    model: str = options.model(),
    text: str | None = typer.Argument(None, help="The text; without it, standard input."),
    pieces: bool = typer.Option(False, "--pieces", help="Each token's id and text, one a line."),
    count: bool = typer.Option(False, "--count", help="Print only how many tokens."),
    chat: bool = typer.Option(
        False,
        "--chat",
        help="The tokens run reads for this prompt: the user's message, after the Modelfile's "
        "system prompt and messages, through the chat template (piped stdin first, as run).",
    ),
    system: str | None = typer.Option(None, "--system", help="With --chat: as run's --system."),
    think: str | None = typer.Option(
        None, "--think", metavar="VALUE", help="With --chat: as run's --think=VALUE."
    ),
    no_bos: bool = typer.Option(
        False, "--no-bos", help="Add no beginning-of-text token (nor any the model adds)."
    ),
    no_parse_special: bool = typer.Option(
        False, "--no-parse-special", help="Read special tokens' text (<|im_start|>) as text."
    ),
    as_json: bool = options.as_json(),
) -> None:
    """Print a text's token ids, as the model reads them.

    One line of ids by default; --pieces for each token's text, --count for how many. The
    model's weights are not loaded: its vocabulary is enough, whatever its size.
    """
    from localrun.cli.progress import resolve_or_pull
    from localrun.engine.options import think_value
    from localrun.engine.tokens import tokenize as tokens_of
    from localrun.errors import UsageError

    if not chat and (system is not None or think is not None):
        raise UsageError("--system and --think shape a chat prompt", "add --chat")
    if chat and (no_bos or no_parse_special):
        raise UsageError("--no-bos and --no-parse-special are for plain text", "drop --chat")
    said = _text(text, chat)
    resolve_or_pull(model)  # a Hub model is pulled first, as run pulls it
    done = tokens_of(
        model, said, chat=chat, system=system, think=think_value(think),
        add_special=not no_bos, parse_special=not no_parse_special, with_pieces=pieces,
    )  # fmt: skip
    _print(done, pieces=pieces, count=count, as_json=as_json)


def _text(text: str | None, chat: bool) -> str:
    """The text to tokenize: as run reads its prompt with --chat (piped stdin, then the
    argument), else the argument, or else standard input as it is (a last newline is a
    token too)."""
    from localrun.cli.runinput import _read_stdin, read_prompt
    from localrun.errors import UsageError

    if text is None and sys.stdin.isatty():
        raise UsageError("no text to tokenize", "localrun tokenize MODEL 'text', or pipe text in")
    if chat:
        return read_prompt([text] if text is not None else [], sys.stdin)
    return text if text is not None else _read_stdin(sys.stdin)


def _print(done: Tokenized, *, pieces: bool, count: bool, as_json: bool) -> None:
    from localrun.engine.tokens import piece_value

    shown = [piece_value(p) for p in done.pieces] if done.pieces is not None else None
    if as_json:
        data: dict[str, object] = {"model": done.model, "count": len(done.tokens)}
        if not count:
            data["tokens"] = (
                [{"id": t, "piece": p} for t, p in zip(done.tokens, shown, strict=True)]
                if shown is not None
                else done.tokens
            )
        print(json.dumps(data, ensure_ascii=False))
    elif count:
        print(len(done.tokens))
    elif shown is not None:
        for token, piece in zip(done.tokens, shown, strict=True):
            print(f"{token}\t{json.dumps(piece, ensure_ascii=False)}")
    else:
        print(" ".join(str(t) for t in done.tokens))
