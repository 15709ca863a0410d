"""A stand-in Ollama registry on 127.0.0.1, for the tests of pulling registry models.

It answers the routes Ollama's own client uses (``server/images.go``, ``server/download.go``):
``GET``/``HEAD /v2/NAMESPACE/MODEL/manifests/TAG`` with a Docker manifest v2 (a config blob and
``application/vnd.ollama.image.*`` layers named by sha256), and
``GET /v2/NAMESPACE/MODEL/blobs/sha256:HEX``, which redirects to a ``/cdn/`` address that serves
the bytes with ``Range``, as registry.ollama.ai sends its blobs to a CDN. It misbehaves on
demand: a status for every request, wrong bytes for a blob, a stall partway (to kill a pull).
Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.ollama.image."


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class RegistryFaults:
    status: int | None = None  # every request answers this
    wrong_bytes: str | None = None  # this digest's bytes are served flipped (same length)
    stall_after: int | None = None  # blob bodies stop at this offset until released


@dataclass
class Logged:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


class FakeRegistry:
    """Publish ``NAMESPACE/MODEL:TAG`` manifests with :meth:`publish`; serve them at ``url``."""

    def __init__(self) -> None:
        self.manifests: dict[str, bytes] = {}  # "ns/model:tag" -> the manifest's bytes
        self.blobs: dict[str, bytes] = {}  # digest -> bytes
        self.faults = RegistryFaults()
        self.requests: list[Logged] = []
        self.stalled = threading.Event()
        self._release = threading.Event()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                registry._answer(self, body=False)

            def do_GET(self) -> None:
                registry._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    def release_stall(self) -> None:
        self._release.set()

    def publish(self, name: str, layers: dict[str, bytes | str]) -> str:
        """Put ``name`` (``ns/model:tag``) up with these layers (kind -> content); return the
        manifest's digest. Publishing a name again replaces its manifest, as a push does."""
        config = json.dumps({"model_format": "gguf", "model_family": "llama"}).encode()
        self.blobs[digest_of(config)] = config
        entries = []
        for kind, content in layers.items():
            data = content.encode() if isinstance(content, str) else content
            self.blobs[digest_of(data)] = data
            entries.append({"mediaType": LAYER + kind, "digest": digest_of(data),
                            "size": len(data)})  # fmt: skip
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": {"mediaType": CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": entries,
        }
        body = json.dumps(manifest, indent=3).encode()  # as Ollama writes it
        self.manifests[name] = body
        return digest_of(body)

    def gets(self, digest: str) -> list[Logged]:
        """The GETs of ``digest``'s bytes (at the CDN address), in order."""
        return [r for r in self.requests if r.method == "GET" and r.path == f"/cdn/{digest}"]

    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        self.requests.append(Logged(h.command, h.path, dict(h.headers.items())))
        if self.faults.status is not None:
            return self._send(h, self.faults.status, b'{"errors":[{"code":"ERROR"}]}', body)
        parts = h.path.split("/")
        if h.path.startswith("/cdn/"):
            return self._blob(h, h.path.removeprefix("/cdn/"), body)
        if len(parts) == 6 and parts[1] == "v2" and parts[4] == "manifests":
            found = self.manifests.get(f"{parts[2]}/{parts[3]}:{parts[5]}")
            if found is None:
                return self._send(h, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', body)
            digest = {"Docker-Content-Digest": digest_of(found)}
            return self._send(h, 200, found, body, MANIFEST_V2, digest)
        if len(parts) == 6 and parts[1] == "v2" and parts[4] == "blobs":
            if parts[5] not in self.blobs:
                return self._send(h, 404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}', body)
            h.send_response(307)
            h.send_header("Location", f"/cdn/{parts[5]}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        return self._send(h, 404, b"not found", body)

    def _send(
        self, h: BaseHTTPRequestHandler, status: int, data: bytes, body: bool,
        content_type: str = "application/json", headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _blob(self, h: BaseHTTPRequestHandler, digest: str, body: bool) -> None:
        data = self.blobs.get(digest)
        if data is None:
            return self._send(h, 404, b"", body)
        if self.faults.wrong_bytes == digest:
            data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
        start = 0
        ranged = h.headers.get("Range", "")
        if ranged.startswith("bytes=") and ranged.endswith("-"):
            start = int(ranged[6:-1])
        h.send_response(206 if start else 200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(data) - start))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if not body:
            return
        stall = self.faults.stall_after
        try:
            if stall is not None and start < stall < len(data):
                h.wfile.write(data[start:stall])
                h.wfile.flush()
                self.stalled.set()
                self._release.wait(120)
                start = stall
            h.wfile.write(data[start:])
        except (BrokenPipeError, ConnectionResetError):
            pass
