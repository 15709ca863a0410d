"""Model names as Ollama's users write them: a default tag, the library's short names, and
the names close to one that is not known.

``NAME`` and ``NAME:latest`` are one name, whichever of the two a model was given. A library
family (``llama3.2``) names the size Ollama's library gives it by default (``llama3.2:3b``),
as the recipe's ``# aliases:`` header says, unless a model here is called that already.
"""

from __future__ import annotations

import difflib

from localrun.hub import store
from localrun.hub.refs import is_hub_ref
from localrun.models import packaged, recipes

LATEST = ":latest"


def spellings(ref: str) -> list[str]:
    """The names ``ref`` may be stored under: itself, then with or without ``:latest``."""
    if is_hub_ref(ref) or "/" in ref or ref.lower().endswith(".gguf"):
        return [ref]
    if ref.endswith(LATEST) and len(ref) > len(LATEST):
        return [ref, ref[: -len(LATEST)]]
    if ":" not in ref:
        return [ref, ref + LATEST]
    return [ref]


def _here(name: str) -> bool:
    """Whether a packaged, pulled or created model (or a library recipe) is called ``name``."""
    return (
        name in packaged.names() or store.load(name) is not None or recipes.find(name) is not None
    )


def canonical(ref: str) -> str:
    """The name under which the model ``ref`` is known; ``ref`` itself when none is."""
    for name in spellings(ref):
        if _here(name):
            return name
    aliases = recipes.aliases()
    for name in spellings(ref):
        if name in aliases:
            return aliases[name]
    return ref


def known() -> list[str]:
    """Every name a model has here, without the network (the library's aliases left out:
    each stands for one of these)."""
    names = [*packaged.names(), *recipes.library()]
    names += [m.name for m in store.all_manifests()]
    names += [r.name for r in recipes.created()]
    return list(dict.fromkeys(names))


def close_to(ref: str, limit: int = 3) -> list[str]:
    """Known names close to ``ref``: its family's sizes first, then the closest spellings."""
    names = known()
    aliases = recipes.aliases()
    family = ref.split(":", 1)[0].lower()
    same = [n for n in names if n.split(":", 1)[0].lower() == family and n != ref]
    by_lower = {n.lower(): n for n in [*names, *aliases]}
    near = difflib.get_close_matches(ref.lower(), list(by_lower), n=limit, cutoff=0.6)
    found = [*same, *(aliases.get(by_lower[n], by_lower[n]) for n in near)]
    return list(dict.fromkeys(found))[:limit]


def did_you_mean(ref: str) -> str:
    """A hint that names what ``ref`` may have meant, or where to look."""
    close = close_to(ref)
    look = "see localrun list and localrun library"
    if not close:
        return f"{look}; pull one with: localrun pull"
    return f"did you mean {' or '.join(close)}? ({look})"
