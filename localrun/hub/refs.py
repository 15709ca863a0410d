"""Model references: what users type to name a model on the Hugging Face Hub.

Accepted forms (``hf.co`` may also be ``huggingface.co``, ``https://hf.co/`` or ``hf://``)::

    hf.co/ORG/REPO                 the repo's Q4_K_M GGUF, else the closest sensible quant
    hf.co/ORG/REPO:QUANT           the GGUF whose file name carries QUANT (case-insensitive)
    hf.co/ORG/REPO/FILE.gguf       one exact file (a path inside the repo)
    ...@REVISION                   a branch, tag or commit, after the repo or at the end

A vision model's repository also holds projectors (``mmproj-*.gguf``): they are never
weights, and one of them is pulled beside the weights (:func:`choose_projector`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from localrun.errors import NotGGUFError, QuantNotFoundError, UsageError

_PREFIXES = (
    "https://huggingface.co/",
    "https://hf.co/",
    "http://huggingface.co/",
    "http://hf.co/",
    "huggingface.co/",
    "hf.co/",
    "hf://",
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
_QUANT = re.compile(r"^[A-Za-z0-9_]{1,32}$")
_QUANT_TOKEN = re.compile(
    r"^(I?Q[1-8](_[A-Z0-9]+)*|TQ[12]_0|MXFP4(_MOE)?|BF16|F16|F32|FP16|FP32)$", re.IGNORECASE
)
_SHARD = re.compile(r"^(?P<base>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.gguf$")

# What a user most likely wants when no quant is named: the 4-bit K-quant that local
# runners default to, then the nearest sizes around it, then the big ones.
PREFERRED_QUANTS = (
    "Q4_K_M", "Q4_K_S", "Q4_K_XL", "IQ4_XS", "IQ4_NL", "Q4_0", "Q5_K_M", "Q5_K_S", "Q5_K_XL",
    "Q5_0", "Q6_K", "Q6_K_XL", "Q3_K_L", "Q3_K_M", "Q3_K_XL", "Q8_0", "Q8_K_XL", "Q3_K_S",
    "IQ3_M", "IQ3_XS", "Q2_K", "Q2_K_XL", "IQ2_M", "BF16", "F16", "F32",
)  # fmt: skip
DEFAULT_QUANT = PREFERRED_QUANTS[0]

# The projector pulled beside the weights: f16 first, as llama.cpp's converter writes it and
# vision repositories (ggml-org's, unsloth's) publish it; a projector is small next to the
# weights, and a quantized vision encoder loses more accuracy than it saves room.
PREFERRED_PROJECTORS = ("F16", "BF16", "Q8_0", "F32")


@dataclass(frozen=True)
class HubRef:
    """A parsed reference to a model on the Hub."""

    repo: str  # ORG/REPO
    quant: str | None = None  # upper case, as users write it
    filename: str | None = None  # an exact path inside the repo
    revision: str | None = None  # None: the default branch

    @property
    def name(self) -> str:
        """The canonical name under which the pulled model is listed."""
        text = f"hf.co/{self.repo}"
        if self.filename:
            text += f"/{self.filename}"
        if self.quant:
            text += f":{self.quant}"
        if self.revision:
            text += f"@{self.revision}"
        return text


def is_hub_ref(text: str) -> bool:
    """Whether ``text`` is written as a Hub reference (rather than a local name or path)."""
    return text.lower().startswith(_PREFIXES)


def parse_hub_ref(text: str) -> HubRef:
    """Parse a Hub reference, refusing anything that could escape the cache."""
    lowered = text.lower()
    prefix = next(p for p in _PREFIXES if lowered.startswith(p))
    rest = text[len(prefix) :]
    revision = quant = None
    if "@" in rest:
        rest, revision = rest.split("@", 1)
        if ":" in revision:
            revision, quant = revision.split(":", 1)
    if ":" in rest:
        rest, quant = rest.rsplit(":", 1)
    parts = rest.rstrip("/").split("/")
    if len(parts) < 2:
        raise UsageError(
            f"'{text}' does not name a repository",
            "write it as hf.co/ORG/REPO, hf.co/ORG/REPO:QUANT or hf.co/ORG/REPO/FILE.gguf",
        )
    org, repo, path = parts[0], parts[1], parts[2:]
    for part in (org, repo):
        if not _NAME.match(part) or ".." in part:
            raise UsageError(
                f"'{part}' is not a valid repository or organisation name in '{text}'",
                "names use letters, digits, '.', '_' and '-'",
            )
    if any(p in ("", ".", "..") or "\\" in p for p in path):
        raise UsageError(
            f"the file path in '{text}' is not allowed (empty, '.' or '..' parts)",
            "name a file inside the repository, such as hf.co/ORG/REPO/model-Q4_K_M.gguf",
        )
    if revision is not None and (not _REVISION.match(revision) or ".." in revision):
        raise UsageError(f"'{revision}' is not a valid revision", "use a branch, tag or commit")
    if quant is not None and not _QUANT.match(quant):
        raise UsageError(f"'{quant}' is not a valid quantization name", "for example Q4_K_M")
    filename = "/".join(path) or None
    if filename and quant:
        raise UsageError(
            f"'{text}' names both a file and a quantization",
            "give either hf.co/ORG/REPO:QUANT or hf.co/ORG/REPO/FILE.gguf",
        )
    return HubRef(
        repo=f"{org}/{repo}",
        quant=quant.upper() if quant else None,
        filename=filename,
        revision=revision or None,
    )


def quant_of(filename: str) -> str | None:
    """The quantization written in a GGUF file name (``...-Q4_K_M.gguf`` gives ``Q4_K_M``)."""
    stem = filename.rsplit("/", 1)[-1]
    shard = _SHARD.match(stem)
    stem = shard.group("base") if shard else stem.removesuffix(".gguf").removesuffix(".GGUF")
    for token in reversed(re.split(r"[-.]", stem)):
        if _QUANT_TOKEN.match(token):
            return token.upper()
    return None


@dataclass(frozen=True)
class GGUFChoice:
    """One loadable model in a repo: a single GGUF or all shards of a split one."""

    files: tuple[str, ...]
    quant: str | None


def is_projector(filename: str) -> bool:
    """Whether a repo's file is a multimodal projector (``mmproj-*.gguf``), not weights."""
    # Anywhere in the name: some repositories put the model's name first (llava-...-mmproj-f16).
    return "mmproj" in filename.rsplit("/", 1)[-1].lower()


def choose_projector(filenames: Iterable[str], weights: GGUFChoice) -> str | None:
    """The projector to pull with ``weights``, if the repo has any: one in the weights' folder
    when there is one there, by :data:`PREFERRED_PROJECTORS`, else the first by name."""
    found = sorted(n for n in filenames if n.lower().endswith(".gguf") and is_projector(n))
    folder = weights.files[0].rpartition("/")[0]
    near = [n for n in found if n.rpartition("/")[0] == folder] or found
    if not near:
        return None
    rank = {q: i for i, q in enumerate(PREFERRED_PROJECTORS)}
    aliases = {"FP16": "F16", "FP32": "F32"}

    def order(name: str) -> int:
        quant = quant_of(name) or ""
        return rank.get(aliases.get(quant, quant), len(rank))

    return min(near, key=order)  # the first by name among equals: ``near`` is sorted


def gguf_choices(filenames: Iterable[str]) -> list[GGUFChoice]:
    """Group a repo's GGUF files into loadable models (complete shard sets only)."""
    singles: list[GGUFChoice] = []
    shards: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for name in filenames:
        base = name.rsplit("/", 1)[-1]
        if not base.lower().endswith(".gguf") or is_projector(name):
            continue
        match = _SHARD.match(name)
        if match:
            key = (match.group("base"), int(match.group("total")))
            shards.setdefault(key, []).append((int(match.group("index")), name))
        else:
            singles.append(GGUFChoice((name,), quant_of(name)))
    for (_, total), parts in shards.items():
        indexes = sorted(i for i, _ in parts)
        if indexes == list(range(1, total + 1)):
            files = tuple(n for _, n in sorted(parts))
            singles.append(GGUFChoice(files, quant_of(files[0])))
    return sorted(singles, key=lambda c: c.files)


def choose(ref: HubRef, filenames: list[str]) -> tuple[GGUFChoice, str | None]:
    """Pick the files to pull for ``ref``; also return a note when the choice was a fallback."""
    if ref.filename:
        if ref.filename not in filenames:
            raise QuantNotFoundError(
                f"{ref.repo} has no file '{ref.filename}'",
                "check the file name with the repository's file list",
            )
        if not ref.filename.lower().endswith(".gguf"):
            raise NotGGUFError(
                f"'{ref.filename}' in {ref.repo} is not a GGUF model file",
                "name a .gguf file; localrun runs GGUF models only",
            )
        if is_projector(ref.filename):
            raise UsageError(
                f"'{ref.filename}' in {ref.repo} is a vision projector, not a model",
                f"pull the model, and its projector comes with it: localrun pull hf.co/{ref.repo}",
            )
        match = _SHARD.match(ref.filename)
        if match:  # one shard named: pull the whole set
            for choice in gguf_choices(filenames):
                if ref.filename in choice.files:
                    return choice, None
        return GGUFChoice((ref.filename,), quant_of(ref.filename)), None
    choices = gguf_choices(filenames)
    if not choices:
        raise NotGGUFError(
            f"{ref.repo} has no GGUF model files",
            "localrun runs GGUF models: look for a repository with '-GGUF' in its name",
        )
    available = _quants(choices)
    if ref.quant:
        for choice in choices:
            if choice.quant == ref.quant:
                return choice, None
        have = ", ".join(available) or "no named quants"
        raise QuantNotFoundError(
            f"{ref.repo} has no {ref.quant} GGUF; it has {have}",
            f"pull one of those, for example hf.co/{ref.repo}:{available[0] if available else ''}",
        )
    for quant in PREFERRED_QUANTS:
        for choice in choices:
            if choice.quant == quant:
                note = None if quant == DEFAULT_QUANT else f"{ref.repo} has no {DEFAULT_QUANT}"
                return choice, note and f"{note}; using {quant}"
    return choices[0], f"{ref.repo} has no {DEFAULT_QUANT}; using {choices[0].files[0]}"


def _quants(choices: list[GGUFChoice]) -> list[str]:
    order = {q: i for i, q in enumerate(PREFERRED_QUANTS)}
    names = {c.quant for c in choices if c.quant}
    return sorted(names, key=lambda q: (order.get(q, len(order)), q))
