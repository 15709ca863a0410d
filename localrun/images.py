"""Pictures given to a vision model: read from files, base64 or data URLs, checked, decoded.

Every way in (``--image``, a path in the prompt, ``/image`` in the chat, the APIs' base64
``images`` and ``image_url`` parts) makes an :class:`Image`: the file's bytes, checked
against a size cap before they are read whole, and named for messages. Decoding is Pillow's
(JPEG, PNG, WebP, GIF, BMP): it reads a picture's size from its header first, so a small
file that would decode into billions of pixels is refused before it is decoded. Every command
imports this module (the CLI's and the server's): its other imports wait until they are used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from localrun.errors import PayloadTooLargeError, UsageError

MAX_IMAGE_BYTES = 20 * 1000**2  # as OpenAI's API: a phone's photo is 2-8 MB
MAX_PIXELS = 64 * 1000**2  # 64 megapixels, read from the header: more is refused undecoded
# A picture is handed to the projector at most this many pixels a side: projectors see 224 to
# 1,536 (Qwen2.5-VL's largest by default), and each picture costs 3 bytes a pixel meanwhile.
MAX_SIDE = 2048
MAX_IMAGES = 32  # pictures in one prompt: each is megabytes until it is evaluated
# What Pillow may decode: the formats vision models are sent (OpenAI's and Ollama's, and BMP).
# Not EPS (Pillow hands it to Ghostscript), nor TIFF and the many rare formats whose decoders
# are larger and see little use.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
# File names that a prompt's words are taken for, as Ollama takes them.
SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


@dataclass(frozen=True)
class Image:
    """One picture: its bytes as given, and where it came from (for messages)."""

    data: bytes
    name: str

    @cached_property
    def digest(self) -> str:
        """The sha256 of its bytes: what the prompt cache and the engine know it by."""
        import hashlib

        return hashlib.sha256(self.data).hexdigest()


def _too_large(name: str, size: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the image {name} is {size / 1e6:.1f} MB, more than {MAX_IMAGE_BYTES // 10**6} MB",
        "send a smaller picture (a vision model sees it at about 1 megapixel anyway)",
    )


def read_image(path: str | Path) -> Image:
    """The picture in file ``path``: a regular file of at most :data:`MAX_IMAGE_BYTES`."""
    from localrun.files import read_capped

    file = Path(path).expanduser()
    try:
        size = file.stat().st_size  # a stat, not an open: a FIFO cannot block it
    except FileNotFoundError:
        raise UsageError(f"no image at {path}", "check the path") from None
    except OSError:
        size = 0  # read_capped says why it cannot be read
    if file.is_file() and size > MAX_IMAGE_BYTES:
        raise _too_large(str(path), size)  # as the server's 413, with the file's size
    # What stat cannot promise (a device, a FIFO, a file still growing) read_capped refuses.
    data = read_capped(file, MAX_IMAGE_BYTES, "the image", "name a picture file")
    return Image(data, str(path))


def image_from_base64(text: str, name: str) -> Image:
    """A picture sent as base64 (Ollama's ``images``); a data URL's prefix is allowed."""
    if text.startswith("data:"):
        return image_from_data_url(text, name)
    if len(text) * 3 // 4 > MAX_IMAGE_BYTES + 3:
        raise _too_large(name, len(text) * 3 // 4)
    import base64
    import binascii

    try:
        # Line breaks and spaces are allowed, as Ollama's decoder allows them.
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{name} is not base64", "send the picture's bytes in base64") from None
    if not data:
        raise UsageError(f"{name} is empty", "send the picture's bytes in base64")
    return Image(data, name)


_DATA_URL = re.compile(r"data:(?P<type>[\w.+/-]*)(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,")


def image_from_data_url(url: str, name: str) -> Image:
    """A picture in a ``data:image/...;base64,...`` URL (OpenAI's ``image_url``)."""
    found = _DATA_URL.match(url)
    if found is None or not found.group("b64"):
        raise UsageError(
            f"{name} is not a base64 data URL", "send data:image/png;base64,... (or JPEG, WebP)"
        )
    kind = found.group("type")
    if kind and not kind.startswith("image/"):
        raise UsageError(f"{name} is {kind}, not a picture", "send an image/* data URL")
    return image_from_base64(url[found.end() :], name)


def fetch_image(url: str, name: str, *, timeout: float = 30.0) -> Image:
    """A picture at an http(s) URL, read up to the size cap (``serve --allow-remote-images``)."""
    import urllib.error
    import urllib.request

    if not url.startswith(("http://", "https://")):
        raise UsageError(f"{name} is not an http(s) or data URL", "send a data: or https: URL")
    request = urllib.request.Request(url, headers={"User-Agent": "localrun"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read(MAX_IMAGE_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise UsageError(f"{name}: {url} answered HTTP {e.code}", "check the URL") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise UsageError(f"{name}: cannot fetch {url} ({reason})", "check the URL") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise _too_large(name, len(data))
    return Image(data, name)


def data_url(image: Image) -> str:
    """The picture as a ``data:`` URL (its type read from its bytes)."""
    import base64
    import io

    import PIL.Image

    try:
        with PIL.Image.open(io.BytesIO(image.data), formats=FORMATS) as opened:
            kind = PIL.Image.MIME.get(opened.format or "", "image/png")
    except Exception:  # Pillow's readers raise many kinds on damaged input
        kind = "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(image.data).decode()}"


def decode_rgb(image: Image) -> tuple[int, int, bytes]:
    """The picture's width, height and pixels (RGB, 8 bits each, rows top to bottom),
    upright by its EXIF orientation, at most :data:`MAX_SIDE` pixels a side (scaled down
    whole); a picture with transparency is put on white."""
    import logging
    import warnings

    # A damaged file makes Pillow warn and log on stderr: its one line is the error below.
    logging.getLogger("PIL").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _decode(image)


def _decode(image: Image) -> tuple[int, int, bytes]:
    import io

    import PIL.Image
    import PIL.ImageOps

    try:
        opened = PIL.Image.open(io.BytesIO(image.data), formats=FORMATS)
    except PIL.Image.DecompressionBombError:  # past Pillow's own bound, far past ours
        raise _too_many_pixels(image, "") from None
    except Exception:  # Pillow's readers raise many kinds on damaged input
        raise _unreadable(image) from None
    with opened:
        width, height = opened.size
        if width * height > MAX_PIXELS:
            raise _too_many_pixels(image, f" {width}x{height} pixels,")
        try:
            opened.draft("RGB", (MAX_SIDE, MAX_SIDE))  # a JPEG decodes at 1/2-1/8 scale: fast
            picture = PIL.ImageOps.exif_transpose(opened)
            if max(picture.size) > MAX_SIDE:
                picture.thumbnail((MAX_SIDE, MAX_SIDE), PIL.Image.Resampling.LANCZOS)
            if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
                rgba = picture.convert("RGBA")
                picture = PIL.Image.new("RGB", rgba.size, (255, 255, 255))
                picture.paste(rgba, mask=rgba.getchannel("A"))
            rgb = picture.convert("RGB")
            return rgb.width, rgb.height, rgb.tobytes()
        except Exception:  # a damaged picture fails its decoder in many ways
            raise _unreadable(image) from None


def _too_many_pixels(image: Image, size: str) -> UsageError:
    return UsageError(
        f"the image {image.name} is{size} more than {MAX_PIXELS // 10**6} megapixels",
        "send a smaller picture",
    )


def _unreadable(image: Image) -> UsageError:
    return UsageError(
        f"cannot read the image {image.name}: not a picture localrun reads, or damaged",
        "send a JPEG, PNG, WebP, GIF or BMP file",
    )


_QUOTED = re.compile(r"""(["'])(?P<path>[^"'\n]+?)\1""")
_WORD = re.compile(r"(?:\\ |\S)+")


def split_image_paths(prompt: str) -> tuple[str, list[Path]]:
    """The prompt without the picture files it names, and those files, as Ollama reads a
    prompt: a word (or a quoted name, or one with ``\\ `` for its spaces) that ends in an
    image suffix and is an existing file. Other words stay text."""
    found: list[Path] = []
    spans: list[tuple[int, int]] = []

    def consider(start: int, end: int, text: str) -> None:
        if not text.lower().endswith(SUFFIXES):
            return
        path = Path(text.replace("\\ ", " ")).expanduser()
        try:
            if not path.is_file():
                return
        except OSError:
            return
        if any(s < end and start < e for s, e in spans):
            return
        spans.append((start, end))
        found.append(path)

    for m in _QUOTED.finditer(prompt):
        consider(m.start(), m.end(), m.group("path"))
    for m in _WORD.finditer(prompt):
        word = m.group(0).rstrip(".,;:!?)")  # a sentence's punctuation after a name
        consider(m.start(), m.start() + len(word), word)
    if not found:
        return prompt, []
    order = sorted(range(len(spans)), key=lambda i: spans[i][0])
    text, last = [], 0
    for i in order:
        start, end = spans[i]
        text.append(prompt[last:start])
        last = end
    text.append(prompt[last:])
    cleaned = re.sub(r"[ \t]{2,}", " ", "".join(text)).strip()
    return cleaned, [found[i] for i in order]
