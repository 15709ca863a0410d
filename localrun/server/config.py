"""What a server is told at start: where it listens, who may call it, and its limits."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from localrun.errors import UsageError

DEFAULT_PORT = 11434  # Ollama's: its clients and plugins find localrun where they look
DEFAULT_KEEP_ALIVE = 300.0  # seconds a model stays loaded after its last request (Ollama's)


@dataclass(frozen=True)
class ServeConfig:
    """A server's settings; see ``localrun serve --help`` for each."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None
    allow_hosts: tuple[str, ...] = ()
    allow_origins: tuple[str, ...] = ()
    allow_admin: bool = False
    max_body: int = 32 * 1024 * 1024  # a 20 MB picture is 27 MB in base64
    allow_remote_images: bool = False  # fetch image_url parts' http(s) URLs (off: SSRF)
    max_queue: int = 64  # requests a model may have waiting beyond those it is running
    max_loaded: int = 3
    parallel: int | None = None  # sequences per model; None: chosen from the memory
    keep_alive: float = DEFAULT_KEEP_ALIVE
    max_predict: int = 32768  # the most num_predict / max_tokens a request may ask for
    threads: int | None = None
    speculative: str | None = None  # lookup, draft or off for every model; None: its Modelfile's
    draft: str | None = None  # the draft model for models that share its vocabulary
    kv_type: str | None = None  # every model's KV cache type; None: its Modelfile's, or config
    flash_attn: str | None = None
    n_ctx: int | None = None  # a model's context when neither request nor Modelfile says
    cpu_moe: int = 0  # a MoE model's experts on the CPU: the first N layers' (-1: all)
    metrics: bool = False  # serve GET /metrics (Prometheus' text format)

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach the server."""
        return is_loopback(self.host)

    @property
    def admin(self) -> bool:
        """Whether model management (pull, delete, copy, create) is allowed."""
        return self.loopback or self.allow_admin

    def check(self) -> None:
        """Refuse settings that would expose the server without protection."""
        if not self.loopback and not self.api_key:
            raise UsageError(
                f"serving on {self.host} would let anyone who can reach it use this machine",
                "set an API key with --api-key or LOCALRUN_API_KEY, or serve on 127.0.0.1",
            )
        if not 0 < self.port < 65536:
            raise UsageError(f"port {self.port} is not a TCP port", "use --port 1-65535")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_and_port(value: str | None, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``LOCALRUN_HOST``'s forms, as ``OLLAMA_HOST``'s: ``host``, ``host:port``, a URL."""
    text = (value or "").strip()
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    text = text.rstrip("/")
    if not text:
        return "127.0.0.1", default_port
    if text.startswith("["):  # [::1]:11434
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if port and not port.isdigit():
        raise UsageError(f"'{value}' is not a host and port", "use HOST:PORT, e.g. 127.0.0.1:11434")
    return host or "127.0.0.1", int(port) if port else default_port


def server_url() -> str:
    """Where ``localrun ps`` and ``localrun stop`` find the server: ``LOCALRUN_HOST``."""
    host, port = host_and_port(os.environ.get("LOCALRUN_HOST"))
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"  # a server listening everywhere is reached here at loopback
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
