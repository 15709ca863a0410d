"""Remote engines: OpenAI-compatible servers (vLLM, SGLang, llama-server, Ollama, another
``localrun serve``) used like local models, with the same view and statistics.

The HTTP layer is the ``openai`` client library (streaming, errors, keys); localrun measures
TTFT and the decode rate on its side of the wire.
"""
