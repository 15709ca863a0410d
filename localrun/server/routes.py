"""The HTTP handlers of every API: read the body, convert it (:mod:`.ollama`, :mod:`.openai`,
:mod:`.anthropic`, :mod:`.responses`), answer through the one writer (:mod:`.stream`)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from localrun import __version__
from localrun.errors import ModelNotFoundError
from localrun.gguf.reader import read_gguf
from localrun.server import anthropic, catalog, embeddings, fields, ollama, openai, responses
from localrun.server.admin import AdminAPI
from localrun.server.answer import Ask, count_tokens, embed
from localrun.server.config import ServeConfig
from localrun.server.pool import ModelPool, resolve_served
from localrun.server.stream import respond
from localrun.server.tokens import TokensAPI


class OllamaAPI:
    """Ollama's handlers, over one pool of models."""

    def __init__(self, pool: ModelPool, config: ServeConfig) -> None:
        self.pool = pool
        self.config = config

    def routes(self) -> list[Route]:
        return [
            Route("/", self.root, methods=["GET", "HEAD"]),
            Route("/api/version", self.version, methods=["GET"]),
            Route("/api/generate", self.generate, methods=["POST"]),
            Route("/api/chat", self.chat, methods=["POST"]),
            Route("/api/tags", self.tags, methods=["GET"]),
            Route("/api/show", self.show, methods=["POST"]),
            Route("/api/ps", self.ps, methods=["GET"]),
            Route("/api/embed", self.embed, methods=["POST"]),
            Route("/api/embeddings", self.embeddings, methods=["POST"]),
            *AdminAPI(self.pool, self.config).routes(),
        ]

    async def root(self, request: Request) -> Response:
        return PlainTextResponse("localrun is running")

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": __version__})

    async def generate(self, request: Request) -> Response:
        body = await fields.read_body(request)
        ask = ollama.generate_ask(body)
        if not ask.messages:
            reason = await self._load_only(ask, body)
            return JSONResponse(ollama.loaded(ask, reason, chat=False))
        reply = ollama.GenerateReply(ask.model)
        streaming = ollama.streaming(body)  # read before the model is held
        return await respond(request, self.pool, ask, reply, ollama.WIRE, streaming=streaming)

    async def chat(self, request: Request) -> Response:
        body = await fields.read_body(request)
        ask = ollama.chat_ask(body)
        if not ask.messages:
            reason = await self._load_only(ask, body)
            return JSONResponse(ollama.loaded(ask, reason, chat=True))
        reply = ollama.ChatReply(ask.model)
        streaming = ollama.streaming(body)  # read before the model is held
        return await respond(request, self.pool, ask, reply, ollama.WIRE, streaming=streaming)

    async def _load_only(self, ask: Ask, body: dict[str, object]) -> str:
        """A request without a prompt loads the model, or with keep_alive 0 unloads it."""
        if ask.keep_alive == 0:
            resolved = await asyncio.to_thread(resolve_served, ask.model)
            await self.pool.unload(resolved.name)
            return "unload"
        num_ctx = fields.options(body.get("options")).get("num_ctx")
        runner = await self.pool.acquire(ask.model, num_ctx)
        self.pool.release(runner, ask.keep_alive)
        return "load"

    async def embed(self, request: Request) -> Response:
        body = await fields.read_body(request)
        name = fields.model_name(body)
        texts = fields.texts(body.get("input"), "input")
        done = await embed(
            self.pool,
            name,
            texts,
            options=fields.options(body.get("options")),
            keep_alive=fields.keep_alive(body.get("keep_alive")),
            truncate=fields.get(body, "truncate", bool, True),
            dimensions=fields.get(body, "dimensions", int),
        )
        return JSONResponse(ollama.embedded(name, done))

    async def embeddings(self, request: Request) -> Response:
        """The older endpoint: one prompt, one ``embedding``."""
        body = await fields.read_body(request)
        name = fields.model_name(body)
        prompt = fields.get(body, "prompt", str, "")
        if not prompt:
            return JSONResponse({"embedding": []})
        done = await embed(
            self.pool,
            name,
            [prompt],
            options=fields.options(body.get("options")),
            keep_alive=fields.keep_alive(body.get("keep_alive")),
        )
        return JSONResponse({"embedding": done.vectors[0]})

    async def tags(self, request: Request) -> Response:
        return JSONResponse({"models": await asyncio.to_thread(catalog.tags)})

    async def show(self, request: Request) -> Response:
        body = await fields.read_body(request)
        name = fields.model_name(body)
        return JSONResponse(await asyncio.to_thread(catalog.show, name))

    async def ps(self, request: Request) -> Response:
        models = []
        for r in self.pool.runners():
            info = await asyncio.to_thread(read_gguf, r.loaded.path)
            plan = r.loaded.plan
            whole = plan.n_gpu_layers and not plan.remote and plan.offloaded == plan.n_layer + 1
            # What this machine's GPUs hold: not what RPC workers hold for it.
            on_gpu = r.size if whole else min(r.size, plan.local_gpu_bytes)
            models.append(
                {
                    "name": r.name,
                    "model": r.name,
                    "size": r.size,
                    "digest": r.digest,
                    "details": catalog.details(info),
                    "expires_at": catalog.timestamp(r.expires_at) if r.expires_at else None,
                    "size_vram": on_gpu,
                    "context_length": r.context_length,
                    "parallel": r.loaded.n_seq,
                    "active": r.active,
                    "placement": r.loaded.placement,
                }
            )
        return JSONResponse({"models": models})


class OpenAIAPI:
    """OpenAI's handlers, over one pool of models."""

    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool

    def routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/v1/rerank", self.rerank, methods=["POST"]),  # llama-server's and vLLM's
            Route("/rerank", self.rerank, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.model, methods=["GET"]),
            Route("/v1/responses", self.responses, methods=["POST"]),
            Route("/v1/messages", self.messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
            *TokensAPI(self.pool).routes(),  # llama-server's and vLLM's /tokenize, /detokenize
        ]

    async def responses(self, request: Request) -> Response:
        """OpenAI's Responses API (Codex's)."""
        body = await fields.read_body(request)
        if self.pool.config.allow_remote_images:  # fetching waits on the network: off the loop
            ask = await asyncio.to_thread(responses.request_ask, body, True)
        else:
            ask = responses.request_ask(body)
        reply = responses.ResponseReply(ask.model, body)
        streaming = fields.get(body, "stream", bool, False)
        return await respond(request, self.pool, ask, reply, responses.WIRE, streaming=streaming)

    async def messages(self, request: Request) -> Response:
        """Anthropic's Messages API (Claude Code's)."""
        body = await fields.read_body(request)
        ask = anthropic.request_ask(body)
        reply = anthropic.MessageReply(ask.model)
        streaming = fields.get(body, "stream", bool, False)
        return await respond(request, self.pool, ask, reply, anthropic.WIRE, streaming=streaming)

    async def count_tokens(self, request: Request) -> Response:
        """Anthropic's token count of a request, as the model would read it."""
        body = await fields.read_body(request)
        ask = anthropic.request_ask(body | {"max_tokens": 1})
        count = await count_tokens(self.pool, ask)
        return JSONResponse({"input_tokens": count})

    async def chat(self, request: Request) -> Response:
        body = await fields.read_body(request)
        if self.pool.config.allow_remote_images:  # fetching waits on the network: off the loop
            ask = await asyncio.to_thread(openai.chat_ask, body, True)
        else:
            ask = openai.chat_ask(body)
        streaming, with_usage = openai.streaming(body)
        reply = openai.ChatReply(ask.model, with_usage)
        return await respond(request, self.pool, ask, reply, openai.WIRE, streaming=streaming)

    async def completions(self, request: Request) -> Response:
        body = await fields.read_body(request)
        ask = openai.completion_ask(body)
        streaming, with_usage = openai.streaming(body)
        echo = ask.messages[-1].content if fields.get(body, "echo", bool, False) else None
        reply = openai.CompletionReply(ask.model, with_usage, echo=echo)
        return await respond(request, self.pool, ask, reply, openai.WIRE, streaming=streaming)

    async def embeddings(self, request: Request) -> Response:
        body = await fields.read_body(request)
        name, texts, encoding = embeddings.embedding_request(body)
        done = await embed(self.pool, name, texts, dimensions=fields.get(body, "dimensions", int))
        return JSONResponse(embeddings.embeddings(name, done.vectors, encoding, done.prompt_tokens))

    async def rerank(self, request: Request) -> Response:
        """The documents by their relevance to a query, from a reranker (Jina's, Cohere's shape)."""
        body = await fields.read_body(request)
        name, query, documents, top_n, with_text = embeddings.rerank_request(body)
        done = await embed(self.pool, name, documents, query=query)
        scores = [v[0] for v in done.vectors]
        return JSONResponse(
            embeddings.reranked(name, documents, scores, top_n, with_text, done.prompt_tokens)
        )

    async def models(self, request: Request) -> Response:
        listed = await asyncio.to_thread(catalog.listed)
        return JSONResponse({"object": "list", "data": [openai.model(m) for m in listed]})

    async def model(self, request: Request) -> Response:
        from localrun.models.names import canonical

        wanted = request.path_params["model"]
        name = await asyncio.to_thread(canonical, wanted)  # NAME:latest is NAME
        for m in await asyncio.to_thread(catalog.listed):
            if m.name == name:
                return JSONResponse(openai.model(m))
        raise ModelNotFoundError(f"model '{wanted}' not found", "see GET /v1/models")
