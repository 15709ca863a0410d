"""Pull models from an Ollama-style registry (``ollama.com/library/llama3.2:3b``).

The protocol is the OCI distribution one that Ollama's ``server/images.go`` (``PullModel``) and
``server/download.go`` speak: ``GET /v2/NAMESPACE/MODEL/manifests/TAG`` answers a Docker
manifest v2 whose layers name blobs by sha256, each fetched from
``/v2/NAMESPACE/MODEL/blobs/sha256:HEX`` (often a redirect to a CDN). A name is
``[HOST/][NAMESPACE/]MODEL[:TAG]`` with Ollama's defaults (``types/model/name.go``):
``registry.ollama.ai``, ``library``, ``latest``. ``LOCALRUN_REGISTRY`` points the default host
(and ``ollama.com``) elsewhere.

Every layer comes down by :func:`localrun.hub.download.fetch`, the Hub pulls' resumable, hashed
transfer, into ``<cache>/partial/sha256-HEX.part``; each is checked against its digest, and only
when all are verified do the file layers become blobs (``<cache>/blobs/sha256-HEX``, as uploads
are kept), linked for the model that :mod:`localrun.models.fromregistry` makes of them. No
library does this: ``ollama``'s Python client only talks to a running Ollama server.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from localrun import paths
from localrun.errors import (
    CorruptDownloadError,
    LocalrunError,
    ModelNotFoundError,
    NetworkError,
    NotGGUFError,
    RegistryError,
    from_os_error,
)
from localrun.gguf.check import GGUF_MAGIC
from localrun.hub import store
from localrun.hub.registry_names import RegistryName

if TYPE_CHECKING:
    from localrun.hub.pull import Reporter

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER = "application/vnd.ollama.image."
FILE_LAYERS = ("model", "projector", "adapter", "draft")  # GGUF files, kept as blobs
TEXT_LAYERS = ("template", "system", "params", "messages", "license")
MAX_MANIFEST = 4 << 20
MAX_TEXT_LAYER = 16 << 20  # a licence is the longest text layer; templates are kilobytes
TIMEOUT_S = 30.0

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Layer:
    kind: str  # model, template, params, ... (the media type's last part)
    digest: str  # sha256:HEX
    size: int

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


@dataclass(frozen=True)
class RegistryManifest:
    """A tag's manifest as the registry sent it."""

    name: RegistryName
    digest: str  # sha256 of its bytes, as Ollama computes it
    layers: tuple[Layer, ...]

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)


# -- talking to the registry ----------------------------------------------------------------


def _headers() -> dict[str, str]:
    from localrun import __version__

    return {"User-Agent": f"localrun/{__version__}"}


@contextmanager
def _as_localrun_errors(name: RegistryName, blobs: bool = False) -> Iterator[None]:
    """The registry's and the network's failures as one line each (ours pass as they are);
    ``blobs``: while downloading the layers a manifest lists."""
    import http.client
    import urllib.error

    from localrun.hub import download

    try:
        yield
    except LocalrunError:
        raise
    except (download.HTTPStatusError, urllib.error.HTTPError) as e:
        status = e.status if isinstance(e, download.HTTPStatusError) else e.code
        if blobs and status == 404:
            raise RegistryError(
                f"the registry at {name.base_url} lacks a layer that the manifest of "
                f"{name.full} lists (HTTP 404)",
                "try again later: the registry is incomplete",
            ) from None
        raise _status_error(status, name) from None
    except download.TransferError as e:
        raise NetworkError(
            f"the connection to the registry dropped while pulling {name.full} ({e})",
            "pull again: it resumes from what was received",
        ) from None
    except urllib.error.URLError as e:
        raise NetworkError(
            f"cannot reach the registry at {name.base_url} ({e.reason})",
            "check the network or LOCALRUN_REGISTRY; pulled models run offline",
        ) from None
    except (OSError, http.client.HTTPException) as e:
        disk = isinstance(e, OSError) and from_os_error(
            e,
            during=f" while pulling {name.full}",
            then=" and pull again: the download resumes where it stopped",
        )
        raise disk or NetworkError(
            f"the connection to the registry failed while pulling {name.full} "
            f"({type(e).__name__}: {e})",
            "pull again: it resumes from what was received",
        ) from None


def _status_error(status: int, name: RegistryName) -> LocalrunError:
    where = f"the registry at {name.base_url}"
    if status == 404:
        return ModelNotFoundError(
            f"'{name.namespace}/{name.model}:{name.tag}' is neither in localrun's library nor "
            f"on {where}",
            "check the name and tag (see localrun library, or the registry's model page)",
        )
    if status in (401, 403):
        return RegistryError(
            f"{where} refused access to {name.full} (HTTP {status})",
            "check the name: private models need the registry's login, which localrun lacks",
        )
    if status == 429 or status >= 500:
        return RegistryError(
            f"{where} failed with HTTP {status}",
            "try again later; downloaded parts are kept and the pull resumes",
        )
    return RegistryError(f"{where} answered HTTP {status} for {name.full}", "try again later")


def fetch_manifest(name: RegistryName) -> RegistryManifest:
    """The tag's manifest (nothing is downloaded but it)."""
    import urllib.request

    request = urllib.request.Request(
        name.manifest_url, headers={**_headers(), "Accept": f"{MANIFEST_V2}, {OCI_MANIFEST}"}
    )
    with _as_localrun_errors(name), urllib.request.urlopen(request, timeout=TIMEOUT_S) as r:
        body = r.read(MAX_MANIFEST + 1)
    if len(body) > MAX_MANIFEST:
        raise RegistryError(
            f"the manifest of {name.full} is over {MAX_MANIFEST} bytes",
            "check LOCALRUN_REGISTRY: it does not look like a model registry",
        )
    return parse_manifest(name, body)


def parse_manifest(name: RegistryName, body: bytes) -> RegistryManifest:
    """A manifest's layers, each checked to have a sha256 digest and a size."""
    bad = RegistryError(
        f"the registry sent a manifest for {name.full} that is not a model's",
        "check LOCALRUN_REGISTRY: it must be an Ollama-style registry",
    )
    try:
        data = json.loads(body)
        raw = data["layers"]
    except (ValueError, KeyError, TypeError):
        raise bad from None
    layers = []
    for item in raw if isinstance(raw, list) else []:
        media = item.get("mediaType", "") if isinstance(item, dict) else ""
        digest, size = item.get("digest"), item.get("size") if isinstance(item, dict) else None
        if not (isinstance(digest, str) and _DIGEST.match(digest)) or not isinstance(size, int):
            raise bad
        kind = media[len(LAYER) :]
        if media.startswith(LAYER) and kind in TEXT_LAYERS and size > MAX_TEXT_LAYER:
            raise RegistryError(
                f"the {kind} layer of {name.full} is {size} bytes, over {MAX_TEXT_LAYER}",
                "pick another tag: that is not a template, parameters or licence",
            )
        if media.startswith(LAYER):
            layers.append(Layer(kind, digest, size))
    if any(layer.kind == "tensor" for layer in layers):
        raise RegistryError(
            f"{name.full} is published as safetensors tensors (for Ollama's MLX engine), "
            "not as a GGUF file",
            "pick a GGUF tag of the model (see its page on the registry)",
        )
    if sum(layer.kind == "model" for layer in layers) != 1:
        raise RegistryError(
            f"the manifest of {name.full} has {sum(x.kind == 'model' for x in layers)} model "
            "layers: localrun runs manifests with one GGUF of weights",
            "pick another tag of the model",
        )
    return RegistryManifest(name, "sha256:" + hashlib.sha256(body).hexdigest(), tuple(layers))


def _part(layer: Layer) -> Path:
    return store.partial_dir() / f"sha256-{layer.hex}.part"


def _fetch_layer(
    manifest: RegistryManifest, layer: Layer, reporter: Reporter
) -> tuple[int, float, str | None]:
    """Bring the layer's part file whole and check it; (bytes transferred, seconds, a text
    layer's content: read, and its part file deleted, while the lock is held)."""
    from filelock import FileLock

    from localrun.hub import download

    part = _part(layer)
    with FileLock(str(part.with_suffix(".lock"))):
        if layer.kind in FILE_LAYERS and store.upload_path(layer.digest).is_file():
            return 0, 0.0, None  # a pull beside this one placed it while this one waited
        have = part.stat().st_size if part.exists() else 0
        reporter.start_file(
            f"{layer.kind} {layer.hex[:12]}", layer.size, have if have <= layer.size else 0
        )
        try:
            transfer = download.fetch(
                manifest.name.blob_url(layer.digest),
                part,
                size=layer.size,
                headers=_headers(),
                timeout=TIMEOUT_S,
                on_bytes=reporter.advance,
            )
        finally:
            reporter.end_file()
        if transfer.sha256 != layer.hex:
            part.unlink()
            raise CorruptDownloadError(
                f"the {layer.kind} layer of {manifest.name.full} does not match its digest "
                f"{layer.digest[:19]}... (the download was deleted; nothing was kept)",
                "pull again; if it happens again, the registry serves a damaged blob",
            )
        if layer.kind in FILE_LAYERS:
            with part.open("rb") as f:
                if f.read(4) != GGUF_MAGIC:
                    part.unlink()
                    raise NotGGUFError(
                        f"the {layer.kind} layer of {manifest.name.full} is not a GGUF file",
                        "localrun runs GGUF models only; pick another model",
                    )
        text = _text(layer) if layer.kind in TEXT_LAYERS else None
    part.with_suffix(".lock").unlink(missing_ok=True)
    return transfer.received, transfer.seconds, text


def _place(layer: Layer) -> Path:
    """Move a verified file layer into the blobs (a pull beside this one may have done it)."""
    blob = store.upload_path(layer.digest)
    paths.ensure_dir(blob.parent)
    try:
        os.replace(_part(layer), blob)
    except FileNotFoundError:
        if not blob.is_file():
            raise
    return blob


def _text(layer: Layer) -> str:
    """A verified text layer's content (its part file then goes)."""
    part = _part(layer)
    text = part.read_bytes().decode("utf-8", errors="replace")
    part.unlink(missing_ok=True)
    return text


# -- the download ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Downloaded:
    """What a manifest's download moved, and its layers once unpacked."""

    downloaded_bytes: int  # transferred in this run
    resumed_bytes: int  # already on disk from an interrupted pull
    transfer_seconds: float
    files: list[tuple[str, Path]]  # (kind, the blob's link for the model): model, projector...
    texts: list[tuple[str, str]]  # (kind, content): template, system, params...


def download(manifest: RegistryManifest, reporter: Reporter, force: bool = False) -> Downloaded:
    """Download and verify every layer the store lacks, then place the file layers as blobs
    linked for a model (:func:`localrun.hub.store.name_upload`) and read the text layers.
    Nothing is placed unless every layer matched its digest. ``force``: pull a model larger
    than this machine's memory."""
    _check_space(manifest, force)
    downloaded = resumed = 0
    transfer_s = 0.0
    texts: list[tuple[str, str]] = []
    for folder in (store.partial_dir(), store.upload_dir()):
        paths.ensure_dir(folder)
    with _as_localrun_errors(manifest.name, blobs=True):
        for layer in manifest.layers:
            if layer.kind in FILE_LAYERS and store.upload_path(layer.digest).is_file():
                continue
            if layer.kind not in FILE_LAYERS + TEXT_LAYERS:
                continue  # what localrun has no use for (Ollama's own config, say)
            got, seconds, text = _fetch_layer(manifest, layer, reporter)
            downloaded, resumed = downloaded + got, resumed + layer.size - got
            transfer_s += seconds
            if text is not None:
                texts.append((layer.kind, text))
        files = _place_files(manifest)
    return Downloaded(downloaded, resumed, transfer_s, files, texts)


def _place_files(manifest: RegistryManifest) -> list[tuple[str, Path]]:
    """The verified file layers moved into the blobs, each linked for the model."""
    files = []
    for layer in manifest.layers:
        if layer.kind in FILE_LAYERS:
            if _part(layer).exists():
                _place(layer)
            files.append((layer.kind, store.name_upload(layer.digest, f"{layer.kind}.gguf")))
    return files


def _check_space(manifest: RegistryManifest, force: bool) -> None:
    import shutil

    from localrun.errors import InsufficientSpaceError
    from localrun.files import human_size
    from localrun.hub.pull import DISK_MARGIN, _existing_ancestor
    from localrun.system import physical_memory

    files = [x for x in manifest.layers if x.kind in FILE_LAYERS]
    size = sum(x.size for x in files)
    want = sum(
        x.size - (_part(x).stat().st_size if _part(x).exists() else 0)
        for x in files
        if not store.upload_path(x.digest).is_file()
    )
    cache = paths.cache_dir()
    free = shutil.disk_usage(_existing_ancestor(cache)).free
    if want > 0 and free < want + DISK_MARGIN:
        raise InsufficientSpaceError(
            f"not enough disk space for {manifest.name.full}: it needs {human_size(want)}, and "
            f"{human_size(free)} is free under {cache}",
            "free some space, or set LOCALRUN_HOME to a disk with more room",
        )
    memory = physical_memory()
    if memory and size > memory and not force:
        raise InsufficientSpaceError(
            f"{manifest.name.full} is {human_size(size)}, more than this machine's "
            f"{human_size(memory)} of memory: it cannot run here",
            "pick a smaller tag, or pass --force to pull it anyway",
        )
