"""Images for vision models: llama.cpp's multimodal library (libmtmd) beside a text model.

A vision model comes as two files: the text model, and a projector (``mmproj``) that turns a
picture into embeddings in the text model's space. :class:`Projector` loads the projector
against a loaded text model, splits a prompt into text tokens and image chunks
(``mtmd_tokenize_from_parts``: no marker in the text, so no text a user writes can stand for
an image), encodes an image chunk once (the vision encoder: the costly part), and decodes its
embeddings into one sequence of the text model's context at a position, as the engine asks.

In a prompt's token list an image stands as a run of one negative id, one entry per position
it takes (:class:`localrun.backend.ImageChunk`): the engine's prefix matching, its sharing of cells
between sequences and the prompt cache's keys then compare images as they compare tokens. The
id comes from the image's sha256, so it is the same in every process; two different images
never get one id in a process (a clash takes the next free id).
"""

from __future__ import annotations

import ctypes
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from localrun.backend import ImageChunk, ImageCost
from localrun.backend.llamacpp import bindings, logs
from localrun.errors import GenerationError, ModelLoadError, UsageError
from localrun.images import Image, decode_rgb

bindings.register()

import llama_cpp.llama_cpp as lc  # noqa: E402
import llama_cpp.mtmd_cpp as mt  # noqa: E402

mt.mtmd_log_set(logs._log_callback, ctypes.c_void_p(0))  # its lines join llama.cpp's, per thread
mt.mtmd_helper_log_set(logs._log_callback, ctypes.c_void_p(0))

# Encoded images kept for reuse (the same picture asked about again): the most bytes of
# embeddings held. A 4B model's image is 256 x 2560 floats (2.6 MB).
ENCODED_CACHE_BYTES = 64 * 1024**2
# Decoded pictures kept for the next prompt that holds them (a chat sends its pictures again
# each turn): the most bytes of RGB held.
DECODED_CACHE_BYTES = 64 * 1024**2
# Images whose ids are remembered (to give a clashing digest another id): about 240 bytes each.
KNOWN_IDS = 65536


class Projector:
    """A projector file loaded against a text model (one per loaded vision model)."""

    def __init__(self, path: Path, model: Any, ctx: Any, *, n_threads: int, gpu: bool) -> None:
        params = mt.mtmd_context_params_default()
        params.use_gpu = gpu
        params.n_threads = n_threads
        params.print_timings = False
        logs.start()
        handle = mt.mtmd_init_from_file(str(path).encode(), model, params)
        if not handle:
            raise _load_error(path)
        self._ctx = handle
        self._lctx = ctx
        self.path = path
        self.vision = bool(mt.mtmd_support_vision(handle))
        self._ids: dict[int, str] = {}  # the negative id of each image seen: its digest
        self._by_digest: OrderedDict[str, int] = OrderedDict()  # least recently seen first
        self._lock = threading.Lock()
        self._encoded = _Kept(ENCODED_CACHE_BYTES)  # digest: its embeddings (engine thread)
        self._decoded = _Kept(DECODED_CACHE_BYTES)  # digest: (width, height, RGB)
        self._n_embd = int(lc.llama_model_n_embd_inp(model))

    def image_id(self, digest: str) -> int:
        """The negative id that stands for the image ``digest`` in token lists."""
        with self._lock:
            found = self._by_digest.get(digest)
            if found is not None:
                self._by_digest.move_to_end(digest)
                return found
            token = -1 - int(digest[:8], 16) % (2**31 - 1)
            while token in self._ids:  # another image has it: the next free one
                token = -1 - (-token) % (2**31 - 1)
            self._ids[token] = digest
            self._by_digest[digest] = token
            if len(self._by_digest) > KNOWN_IDS:  # the oldest is forgotten; a clash with it
                _, old = self._by_digest.popitem(last=False)  # is 1 in 2**31 a picture
                del self._ids[old]
            return token

    def tokenize(
        self, texts: Sequence[str], images: Sequence[Image], *, parse_special: bool
    ) -> tuple[list[int], dict[int, ImageChunk]]:
        """``texts[0]``, ``images[0]``, ``texts[1]``, ... (one text more than images) as one
        token list with each image's run of ids, and the images' chunks by id."""
        assert len(texts) == len(images) + 1
        if images and not self.vision:
            raise UsageError(
                f"the projector {self.path.name} reads no images (audio only)",
                "use a vision model's projector",
            )
        keep: list[Any] = []  # the ctypes objects the parts point to, alive until the call
        parts: list[Any] = []
        bitmaps: dict[str, Any] = {}  # one per picture, however often it comes
        try:
            for i, text in enumerate(texts):
                data = text.encode("utf-8")
                if data or i == 0:
                    piece = mt.mtmd_input_text(data, len(data), True, parse_special)
                    keep.append(piece)
                    parts.append(mt.mtmd_input_part(ctypes.pointer(piece), None))
                if i < len(images):
                    image = images[i]
                    if image.digest not in bitmaps:
                        bitmaps[image.digest] = self._bitmap(image)
                    parts.append(mt.mtmd_input_part(None, bitmaps[image.digest]))
            array = (ctypes.POINTER(mt.mtmd_input_part) * len(parts))(
                *[ctypes.pointer(p) for p in parts]
            )
            chunks = mt.mtmd_input_chunks_init()
            try:
                logs.start()
                rc = mt.mtmd_tokenize_from_parts(self._ctx, chunks, array, len(parts), True)
                if rc != 0:
                    errors = logs.recent_errors()
                    raise UsageError(
                        "llama.cpp could not prepare the images"
                        + (f": {errors[-1].split(': ')[-1].strip()}" if errors else ""),
                        "send JPEG, PNG or WebP pictures",
                    )
                return self._read_chunks(chunks, images)
            finally:
                mt.mtmd_input_chunks_free(chunks)
        finally:
            for bitmap in bitmaps.values():
                mt.mtmd_bitmap_free(bitmap)

    def _bitmap(self, image: Image) -> Any:
        with self._lock:
            decoded = self._decoded.get(image.digest)
        if decoded is None:
            decoded = decode_rgb(image)
            with self._lock:
                self._decoded.put(image.digest, decoded, len(decoded[2]))
        width, height, rgb = decoded
        data = (ctypes.c_uint8 * len(rgb)).from_buffer_copy(rgb)
        bitmap = mt.mtmd_bitmap_init(width, height, data)
        if not bitmap:
            raise UsageError(f"llama.cpp could not take the image {image.name}", None)
        mt.mtmd_bitmap_set_id(bitmap, image.digest.encode())
        return bitmap

    def _read_chunks(
        self, chunks: Any, images: Sequence[Image]
    ) -> tuple[list[int], dict[int, ImageChunk]]:
        tokens: list[int] = []
        found: dict[int, ImageChunk] = {}
        image_no = 0
        for i in range(int(mt.mtmd_input_chunks_size(chunks))):
            chunk = mt.mtmd_input_chunks_get(chunks, i)
            kind = int(mt.mtmd_input_chunk_get_type(chunk))
            if kind == mt.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                ids = mt.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                tokens.extend(ids[: n.value])
                continue
            image = images[image_no]
            image_no += 1
            own = mt.mtmd_input_chunk_copy(chunk)
            item = ImageChunk(
                digest=image.digest,
                token=self.image_id(image.digest),
                n_tokens=int(mt.mtmd_input_chunk_get_n_tokens(chunk)),
                n_pos=int(mt.mtmd_input_chunk_get_n_pos(chunk)),
                name=image.name,
                handle=own,
            )
            weakref.finalize(item, mt.mtmd_input_chunk_free, own)
            found[item.token] = item
            tokens.extend([item.token] * item.n_pos)
        return tokens, found

    def evaluate(self, chunk: ImageChunk, seq: int, pos: int, n_batch: int) -> ImageCost:
        """Put ``chunk``'s embeddings into sequence ``seq`` at ``pos`` (the engine's thread
        only): encoded here unless the same picture's embeddings are kept."""
        import numpy as np

        start = time.perf_counter()
        embd = self._encoded.get(chunk.digest)
        encode_s = 0.0
        if embd is None or embd.size != chunk.n_tokens * self._n_embd:
            logs.start()
            if mt.mtmd_encode_chunk(self._ctx, chunk.handle) != 0:
                raise UsageError(
                    f"llama.cpp could not encode the image {chunk.name}",
                    "LOCALRUN_DEBUG=1 shows llama.cpp's log",
                )
            out = mt.mtmd_get_output_embd(self._ctx)
            size = chunk.n_tokens * self._n_embd
            embd = np.ctypeslib.as_array(out, shape=(size,)).copy()
            self._encoded.put(chunk.digest, embd, embd.nbytes)
            encode_s = time.perf_counter() - start
        new_pos = lc.llama_pos(0)
        pointer = embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        rc = mt.mtmd_helper_decode_image_chunk(
            self._ctx, self._lctx, chunk.handle, pointer, pos, seq, n_batch,
            ctypes.byref(new_pos), mt.mtmd_helper_post_decode_callback(), None,
        )  # fmt: skip
        if rc == 1:
            return ImageCost(encode_s, ok=False)  # no room in the cache
        if rc != 0:
            raise GenerationError(
                f"llama.cpp failed to evaluate the image {chunk.name} (code {rc})",
                "LOCALRUN_DEBUG=1 shows llama.cpp's log",
            )
        return ImageCost(encode_s)

    def close(self) -> None:
        if self._ctx:
            mt.mtmd_free(self._ctx)
            self._ctx = None


class _Kept:
    """Values by digest, the least recently used dropped past a bound in bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0

    def get(self, digest: str) -> Any:
        found = self._items.get(digest)
        if found is None:
            return None
        self._items.move_to_end(digest)
        return found[0]

    def put(self, digest: str, value: Any, size: int) -> None:
        if size > self.limit or digest in self._items:
            return
        self._items[digest] = (value, size)
        self._bytes += size
        while self._bytes > self.limit:
            _, (_, dropped) = self._items.popitem(last=False)
            self._bytes -= dropped


def _load_error(path: Path) -> ModelLoadError:
    errors = [line.strip() for line in logs.recent_errors() if line.strip()]
    mismatch = next((line for line in errors if "mismatch" in line), None)
    if mismatch is not None:
        reason = mismatch.split("error: ", 1)[-1].splitlines()[0]
        return ModelLoadError(
            f"the projector {path.name} does not match the model ({reason})",
            "use the mmproj file from the model's own repository",
        )
    reason = errors[-1].split(": ", 1)[-1] if errors else "llama.cpp refused it"
    return ModelLoadError(
        f"cannot load the projector {path.name}: {reason}",
        "pull the model again, or name the mmproj file that came with it",
    )
