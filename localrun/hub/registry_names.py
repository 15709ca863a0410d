"""Model names in an Ollama-style registry: ``[HOST/][NAMESPACE/]MODEL[:TAG]``, with Ollama's
defaults (``types/model/name.go``: ``registry.ollama.ai``, ``library``, ``latest``), and the
registry's URLs for them (``LOCALRUN_REGISTRY`` stands for Ollama's own hosts). Kept apart from
:mod:`localrun.hub.registry` so that resolving a name loads no HTTP client."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from localrun.errors import UsageError

DEFAULT_REGISTRY = "https://registry.ollama.ai"
DEFAULT_HOST = "registry.ollama.ai"
# Hosts that mean Ollama's own registry: the one LOCALRUN_REGISTRY stands for.
OLLAMA_HOSTS = ("registry.ollama.ai", "ollama.com", "www.ollama.com")
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}(:\d{1,5})?$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,79}$")


@dataclass(frozen=True)
class RegistryName:
    """A model's name in a registry: ``HOST/NAMESPACE/MODEL:TAG``."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def base_url(self) -> str:
        """The registry's URL: ``LOCALRUN_REGISTRY`` for Ollama's hosts, else https://HOST."""
        if self.host.lower() in OLLAMA_HOSTS:
            return os.environ.get("LOCALRUN_REGISTRY", DEFAULT_REGISTRY).rstrip("/")
        return f"https://{self.host}"

    @property
    def manifest_url(self) -> str:
        return f"{self.base_url}/v2/{self.namespace}/{self.model}/manifests/{self.tag}"

    def blob_url(self, digest: str) -> str:
        return f"{self.base_url}/v2/{self.namespace}/{self.model}/blobs/{digest}"


def is_registry_name(text: str) -> bool:
    """Whether ``text`` names Ollama's registry by its host (``ollama.com/library/NAME``)."""
    first = _strip_scheme(text).split("/", 1)[0].lower()
    return "/" in _strip_scheme(text) and first in OLLAMA_HOSTS


def _strip_scheme(text: str) -> str:
    for scheme in ("https://", "http://"):
        if text.lower().startswith(scheme):
            return text[len(scheme) :]
    return text


def parse_name(text: str) -> RegistryName:
    """``[HOST/][NAMESPACE/]MODEL[:TAG]`` with Ollama's defaults, or a UsageError."""
    rest = _strip_scheme(text.strip())
    if "@" in rest:
        rest = rest.split("@", 1)[0]  # a digest pin: the tag's manifest is what is pulled
    parts = rest.split("/")
    last = parts[-1]
    model, _, tag = last.partition(":")
    tag = tag or DEFAULT_TAG
    if len(parts) == 3:
        host, namespace = parts[0], parts[1]
    elif len(parts) == 2:
        host, namespace = DEFAULT_HOST, parts[0]
    elif len(parts) == 1:
        host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    else:
        host = namespace = ""
    if not (_HOST.match(host) and _PART.match(namespace) and _PART.match(model)):
        raise UsageError(
            f"'{text[:120]}' is not a registry model name",
            "write [HOST/][NAMESPACE/]MODEL[:TAG], such as ollama.com/library/llama3.2:3b",
        )
    if not _TAG.match(tag):
        raise UsageError(f"'{tag[:80]}' is not a tag", "tags are letters, digits and ._-")
    return RegistryName(host, namespace, model, tag)


def local_name(text: str) -> str:
    """The name the pulled model is known by here: what was typed, without a scheme."""
    return _strip_scheme(text.strip()).split("@", 1)[0]
