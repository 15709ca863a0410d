"""A loaded model and the batching engine over it, owned together and closed in order.

:class:`~localrun.engine.load.LoadedModel` only loads; a :class:`ModelRunner` starts the
engine over it (its prompt cache, its draft model's guesses) and, when closed, stops the
engine first (after its current step) and frees the model second: the engine thread must
never step on a freed context. The server's pool holds one runner per loaded model; the
callers that hold only the loaded model (a chat, ``run``) reach its one runner through
:func:`runner_of`, and ``loaded.close()`` stops that runner's engine first too.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, cast

from localrun.backend import StepModel
from localrun.engine.load import LoadedModel

if TYPE_CHECKING:
    from localrun.engine.batch import BatchEngine


class ModelRunner:
    """One loaded model and its batching engine (started on first use)."""

    def __init__(self, loaded: LoadedModel) -> None:
        assert loaded.owner is None, "one engine a model: use runner_of(loaded)"
        self.loaded = loaded
        self._engine: BatchEngine | None = None
        self._lock = threading.Lock()  # the engine is started once, from any thread
        loaded.owner = self  # so that loaded.close() stops the engine first

    @property
    def engine(self) -> BatchEngine:
        """The batching engine over the model: its thread starts on first use."""
        return self.start()

    def start(self) -> BatchEngine:
        """Start the engine's thread now, if it is not running yet; the engine."""
        with self._lock:
            if self._engine is None:
                self._engine = self._new_engine()
            return self._engine

    def _new_engine(self) -> BatchEngine:
        from localrun.engine.batch import BatchEngine
        from localrun.engine.prompt_cache import PromptCache, model_identity

        loaded = self.loaded
        model = cast(StepModel, loaded.model)
        cache = None
        if loaded.prompt_cache and loaded.path.is_file():
            cache = PromptCache(model_identity(loaded.path), model.layout())
        drafter = None
        if loaded.draft is not None:
            from localrun.engine.draft import Drafter

            drafter = Drafter(cast(StepModel, loaded.draft.model), seq_ctx=loaded.draft.seq_ctx)
        row_cost, draft_cost = _guess_costs(loaded)
        return BatchEngine(
            model,
            seq_ctx=loaded.seq_ctx,
            prompt_cache=cache,
            drafter=drafter,
            row_cost=row_cost,
            draft_cost=draft_cost,
        )

    def stop(self) -> None:
        """Stop the engine (after its current step; requests still running end as
        cancelled); the model stays loaded. The next use starts a new engine."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()
        if self.loaded.owner is self:
            self.loaded.owner = None

    def close(self) -> None:
        """Stop the engine, then free the model."""
        self.stop()
        self.loaded.close()


_made = threading.Lock()


def runner_of(loaded: LoadedModel) -> ModelRunner:
    """The one runner of ``loaded``, made on first use: for the callers that hold only the
    loaded model, whose ``close()`` stops the runner's engine before it frees the model."""
    with _made:
        owner = loaded.owner
        if isinstance(owner, ModelRunner):
            return owner
        return ModelRunner(loaded)


def _guess_costs(loaded: LoadedModel) -> tuple[float, float]:
    """What a guess costs, in plain steps, for the engine's counted pace: a checked row
    (small where the whole model is on a GPU), and a draft pass (decode reads the weights:
    the draft's size against the model's)."""
    from localrun.engine.speculative import ROW_COST_CPU, ROW_COST_GPU

    plan = loaded.plan
    on_gpu = plan.n_layer > 0 and plan.offloaded > plan.n_layer
    draft_cost = 0.0
    if loaded.draft is not None and loaded.path.is_file() and loaded.draft.path.is_file():
        draft_cost = loaded.draft.path.stat().st_size / max(loaded.path.stat().st_size, 1)
    return (ROW_COST_GPU if on_gpu else ROW_COST_CPU), draft_cost
