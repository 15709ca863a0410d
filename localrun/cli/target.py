"""Where a model's name leads run and bench: to a remote engine (registered with ``localrun
remote add``, given by --endpoint, or under a created model made ``FROM`` one), or here."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from localrun.models.resolve import Settings
    from localrun.remote.registry import Remote


def remote_named(model: str, endpoint: str | None) -> Remote | None:
    """The remote engine that ``model`` names (registered, or on --endpoint), if any."""
    return remote_and_settings(model, endpoint)[0]


def remote_and_settings(model: str, endpoint: str | None) -> tuple[Remote | None, Settings]:
    """The remote engine ``model`` names, with the settings of a created model made
    ``FROM`` it (its SYSTEM, PARAMETERs, MESSAGEs, stops)."""
    from localrun.models import recipes
    from localrun.models.resolve import Settings
    from localrun.prompt.template import Message
    from localrun.remote import registry

    if endpoint is not None:
        return registry.Remote(model, registry.base_url(endpoint), model), Settings()
    if (found := registry.find(model)) is not None:
        return found, Settings()
    recipe = recipes.find(model)
    if recipe is None or (base := registry.find(recipe.modelfile.from_)) is None:
        return None, Settings()
    mf = recipe.modelfile
    settings = Settings(
        parameters=dict(mf.parameters),
        stop=tuple(mf.stop),
        system=mf.system,
        messages=tuple(Message(r, t) for r, t in mf.messages),
    )
    return base, settings
