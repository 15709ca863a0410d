"""``localrun serve``: the Ollama and OpenAI HTTP APIs over the batching engine.

The HTTP layer only translates and validates: :mod:`.ollama` and :mod:`.openai` turn their
API's requests into the engine's and its events back into their API's shape; :mod:`.pool`
alone decides which models stay loaded (one batching engine each); :mod:`.guard` checks every
request (Host, Origin, key, body size) before any handler sees it. Starlette and uvicorn are
imported only here, so the other commands start as fast as before.
"""
