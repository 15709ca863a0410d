"""``POST /tokenize`` and ``/detokenize``: llama-server's shapes, and vLLM's.

llama-server's ``/tokenize`` takes ``content`` (a text, or texts and token ids mixed), with
``add_special`` (default false), ``parse_special`` (true) and ``with_pieces`` (false: ids;
true: ``{"id", "piece"}`` objects, the piece a string where it is whole UTF-8, else its
bytes). vLLM's takes a ``prompt``, or chat ``messages`` (with ``tools``): those are counted as
an answer reads them, through the chat template with the Modelfile's system prompt, so the
count is the ``prompt_eval_count`` (``usage.prompt_tokens``) that answering the same request
reports. Every answer has ``tokens``, ``count`` and ``max_model_len`` (the request's context);
vLLM's ``return_token_strs`` adds ``token_strs``. ``/detokenize`` takes ``tokens`` and gives
the text as ``content`` (llama-server's) and ``prompt`` (vLLM's).

Both servers serve one model; this one serves many: ``model`` names it, and may be left out
while exactly one model is loaded. Ollama's API has no such endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from localrun.engine import tokens as engine
from localrun.engine.options import run_options
from localrun.errors import UsageError
from localrun.server import fields, openai
from localrun.server.answer import Ask, _request
from localrun.server.pool import ModelPool, Runner

_FORMS = "send 'content' (llama-server's form), or 'prompt' or 'messages' (vLLM's)"


class TokensAPI:
    """The tokenizer's handlers, over one pool of models."""

    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool

    def routes(self) -> list[Route]:
        return [
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/detokenize", self.detokenize, methods=["POST"]),
        ]

    async def tokenize(self, request: Request) -> Response:
        body = await fields.read_body(request)
        body = {**body, "model": self._model(body)}
        if body.get("content") is not None:
            return JSONResponse(await self._content(body))
        if body.get("messages") is not None or body.get("prompt") is not None:
            return JSONResponse(await self._asked(body))
        raise UsageError("the request has nothing to tokenize", _FORMS)

    async def detokenize(self, request: Request) -> Response:
        body = await fields.read_body(request)
        name = self._model(body)
        async with self._held(name, body) as runner:
            vocab = _vocab(runner)
            # Checked off the event loop too: a body of 32 MiB holds millions of ids.
            text = await asyncio.to_thread(
                lambda: engine.detokenize(vocab, engine.check_ids(vocab, body.get("tokens")))
            )
        return JSONResponse({"content": text, "prompt": text})

    def _model(self, body: dict[str, Any]) -> str:
        """The model the request names; left out, the one model loaded."""
        if body.get("model") is not None or body.get("name") is not None:
            return fields.model_name(body)
        loaded = sorted({r.name for r in self.pool.runners()})
        if len(loaded) == 1:
            return loaded[0]
        some = f"{len(loaded)} models are" if loaded else "no model is"
        raise UsageError(
            f"the request names no model: 'model' is missing, and {some} loaded",
            'add "model": NAME',
        )

    @contextlib.asynccontextmanager
    async def _held(
        self, name: str, body: dict[str, Any], num_ctx: int | None = None
    ) -> AsyncIterator[Runner]:
        """The model's runner (loaded if need be, with the context asked: Ollama's
        ``options.num_ctx``, else ``num_ctx``) while the request uses it."""
        keep = fields.keep_alive(body.get("keep_alive"))
        num_ctx = fields.options(body.get("options")).get("num_ctx", num_ctx)
        runner = await self.pool.acquire(name, num_ctx)
        try:
            yield runner
        finally:
            self.pool.release(runner, keep)

    async def _content(self, body: dict[str, Any]) -> dict[str, Any]:
        """llama-server's form: the text tokenized as it is."""
        content = body["content"]
        parts = [content] if isinstance(content, str) else content
        if not isinstance(parts, list) or not all(
            isinstance(p, (str, int)) and not isinstance(p, bool) for p in parts
        ):
            raise UsageError(
                "'content' must be a text, or a list of texts and token ids",
                'send "content": "Hello"',
            )
        add_special = fields.get(body, "add_special", bool, False)
        parse_special = fields.get(body, "parse_special", bool, True)
        async with self._held(body["model"], body) as runner:
            vocab = _vocab(runner)
            for i, part in enumerate(parts):
                if isinstance(part, int):
                    engine.check_id(vocab, part, f"content[{i}]")
            found = await asyncio.to_thread(
                engine.mixed_tokens, vocab, parts,
                add_special=add_special, parse_special=parse_special,
            )  # fmt: skip
            return await asyncio.to_thread(_answer, runner, found, body)

    async def _asked(self, body: dict[str, Any]) -> dict[str, Any]:
        """vLLM's form: a prompt or messages, counted as an answer to them reads them."""
        _refuse_other_prompts(body)
        ask = await self._ask(body)
        async with self._held(ask.model, body, ask.options.get("num_ctx")) as runner:
            options = run_options(runner.settings, stop=ask.options.get("stop", ()))
            found = await asyncio.to_thread(engine.prompt_of, runner.loaded, _request(ask, options))
            return await asyncio.to_thread(_answer, runner, found, body)

    async def _ask(self, body: dict[str, Any]) -> Ask:
        """The request the prompt or messages would be as /v1/completions' or
        /v1/chat/completions', without what they would answer with."""
        if body.get("messages") is not None:
            if self.pool.config.allow_remote_images:  # fetching waits on the network
                return await asyncio.to_thread(openai.chat_ask, body, True)
            return openai.chat_ask(body)
        return openai.completion_ask(body)


def _refuse_other_prompts(body: dict[str, Any]) -> None:
    """vLLM's switches for prompts other than an answer's: refused, not ignored, since the
    count would not be the one asked for."""
    if not fields.get(body, "add_generation_prompt", bool, True):
        raise UsageError(
            "'add_generation_prompt': false is not supported",
            "leave it out: the count is of the prompt an answer reads, which opens the answer",
        )
    if fields.get(body, "continue_final_message", bool, False):
        raise UsageError("'continue_final_message' is not supported", "leave it out")


def _vocab(runner: Runner) -> engine.Vocab:
    return cast(engine.Vocab, runner.loaded.model)  # a loaded model has its pieces too


def _answer(runner: Runner, found: list[int], body: dict[str, Any]) -> dict[str, Any]:
    """The answer to a /tokenize: the ids, or with ``with_pieces`` each id with its piece,
    the count, the context, and with ``return_token_strs`` each token's vocabulary text."""
    vocab = _vocab(runner)
    listed: list[Any] = list(found)
    if fields.get(body, "with_pieces", bool, False):
        # A picture's runs of negative ids (a chat with images) have no piece.
        listed = [
            {"id": t, "piece": engine.piece_value(vocab.piece(t, special=True) if t >= 0 else b"")}
            for t in found
        ]
    said: dict[str, Any] = {
        "tokens": listed,
        "count": len(found),
        "max_model_len": runner.loaded.seq_ctx,
    }
    if fields.get(body, "return_token_strs", bool, False):
        said["token_strs"] = [vocab.token_text(t) if t >= 0 else None for t in found]
    return said
