"""The engine: resolve a model, load it, and generate text with honest statistics.

This module is the library behind ``localrun run``; it never imports typer or rich.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localrun import backend
from localrun.backend import LoadOptions, Model, Prefilled, SamplingParams
from localrun.backend.llamacpp import offload
from localrun.backend.llamacpp.offload import (
    AUTO,
    GPU,
    ModelSizes,
    Plan,
    memory_key,
    model_sizes,
    remember,
    remembered,
)
from localrun.errors import ModelNotFoundError, OutOfMemoryError, PromptTooLongError
from localrun.gguf.check import check_model_file
from localrun.gguf.reader import read_gguf
from localrun.hub import store
from localrun.hub.refs import is_hub_ref
from localrun.models import recipes
from localrun.prompt.template import Message, render

if TYPE_CHECKING:
    from localrun.hub.pull import Reporter

CHAT = "chat"
COMPLETION = "completion"

# A prompt is refused unread when it has more characters than this per token of context: no
# real text averages 64 characters a token (long runs of spaces make about 31).
MAX_CHARS_PER_TOKEN = 64
# Tokenizing stops early once a prompt passes this many contexts' worth of tokens.
TOKENIZE_LIMIT_FACTOR = 2
# A text longer than this many characters per allowed token is counted in slices first.
PROBE_CHARS_PER_TOKEN = 8


@dataclass(frozen=True)
class Request:
    """One prompt to answer."""

    prompt: str
    system: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None  # None: until the model stops or the context is full
    stop: tuple[str, ...] = ()
    history: tuple[Message, ...] = ()  # earlier messages (a Modelfile's MESSAGE lines)


@dataclass
class Stats:
    """Timings of one answer. Times in seconds; rates in tokens per second."""

    load_s: float = 0.0
    prompt_tokens: int = 0
    prompt_evaluated: int = 0
    prefill_s: float = 0.0
    prefill_tokens_per_s: float = 0.0
    ttft_s: float = 0.0
    completion_tokens: int = 0
    decode_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    total_s: float = 0.0
    finish_reason: str = "stop"

    def as_dict(self) -> dict[str, float | int | str]:
        """The statistics as a JSON-ready dictionary."""
        return asdict(self)


@dataclass(frozen=True)
class PromptEvaluated:
    """The prompt has been prefilled (``evaluated`` excludes tokens reused from the cache)."""

    prompt_tokens: int
    evaluated: int
    seconds: float


@dataclass(frozen=True)
class FirstToken:
    """The first token was sampled, ``ttft_s`` after the request."""

    ttft_s: float


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer, ready to print (may be empty while a character is incomplete)."""

    text: str
    tokens: int = 0  # answer tokens so far


@dataclass(frozen=True)
class Finished:
    """The answer is complete."""

    stats: Stats


Event = PromptEvaluated | FirstToken | TextDelta | Finished


@dataclass
class LoadedModel:
    """A model ready to answer, with what the user called it and how long it took to load."""

    name: str
    path: Path
    model: Model
    load_s: float
    plan: Plan = field(default_factory=lambda: Plan(0, 0, (), None, 0, "no GPU requested"))
    notes: list[str] = field(default_factory=list)  # what loading had to adjust, for people
    template_override: str | None = None  # a Modelfile's TEMPLATE, as Jinja

    @property
    def template(self) -> str | None:
        """The chat template in use: the Modelfile's, else the GGUF's own."""
        return self.template_override or self.model.chat_template

    @property
    def placement(self) -> str:
        """Where the layers run, in short: "CPU" or "GPU 18/19"."""
        return self.plan.placement

    @property
    def mode(self) -> str:
        """``chat`` when the model has a chat template, else plain ``completion``."""
        return CHAT if self.template else COMPLETION

    def close(self) -> None:
        """Free the model."""
        self.model.close()


@dataclass(frozen=True)
class Settings:
    """What a Modelfile (or a chain of them) says about running a model."""

    parameters: dict[str, float | int | str] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    system: str | None = None
    template: str | None = None  # Jinja
    messages: tuple[Message, ...] = ()
    adapters: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Resolved:
    """A model reference resolved to a file, with the settings its recipes give it."""

    path: Path
    settings: Settings = field(default_factory=Settings)


def resolve(ref: str, reporter: Reporter | None = None, _seen: tuple[str, ...] = ()) -> Resolved:
    """Turn what the user typed into a GGUF file and its settings.

    ``ref`` is ``demo``, a Hub reference (pulled first if it is not in the store), a pulled
    model's name, a created or library model (a Modelfile, whose FROM is resolved in
    turn), or a path to a ``.gguf`` file.
    """
    if not ref.strip():
        raise ModelNotFoundError(
            "the model name is empty", "name a model: see localrun list and localrun library"
        )
    if ref == "demo":
        from localrun.models.demo import demo_model_path

        return Resolved(demo_model_path())
    if is_hub_ref(ref):
        from localrun.hub.pull import pull

        return Resolved(pull(ref, reporter=reporter, refresh=False).manifest.model_path)
    manifest = store.load(ref)
    if manifest is not None:
        manifest.require_files()
        return Resolved(manifest.model_path)
    recipe = recipes.find(ref)
    if recipe is not None:
        if ref in _seen:
            raise ModelNotFoundError(
                f"the models {' -> '.join((*_seen, ref))} are each FROM the next, in a loop",
                "change one FROM to a model file or a Hub reference",
            )
        base = resolve(recipe.modelfile.from_, reporter, (*_seen, ref))
        return Resolved(base.path, _merge(base.settings, recipe))
    path = Path(ref).expanduser()
    try:
        exists = path.exists()
    except OSError:  # a name too long to be a file name, for one
        exists = False
    if exists or path.suffix == ".gguf" or "/" in ref:
        check_model_file(path)
        return Resolved(path)
    raise ModelNotFoundError(
        f"unknown model '{ref}': not a file, a pulled or created model, or a Hub reference",
        "see models with: localrun list and localrun library; pull one with: localrun pull",
    )


def _merge(base: Settings, recipe: recipes.Recipe) -> Settings:
    """The recipe's settings over its base's."""
    mf = recipe.modelfile
    return Settings(
        parameters={**base.parameters, **mf.parameters},
        stop=tuple(mf.stop) or base.stop,
        system=mf.system if mf.system is not None else base.system,
        template=recipe.jinja_template or base.template,
        messages=tuple(Message(r, t) for r, t in mf.messages) or base.messages,
        adapters=base.adapters + tuple(Path(a) for a in mf.adapters),
    )


@dataclass(frozen=True)
class RunOptions:
    """Everything that shapes a run, after layering the defaults, the Modelfile, the flags."""

    sampling: SamplingParams
    max_tokens: int | None
    stop: tuple[str, ...]
    system: str | None
    n_ctx: int | None
    gpu_layers: str | int
    threads: int | None
    history: tuple[Message, ...]


def run_options(
    settings: Settings,
    *,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repeat_penalty: float | None = None,
    repeat_last_n: int | None = None,
    seed: int | None = None,
    max_tokens: int | None = None,
    stop: tuple[str, ...] = (),
    system: str | None = None,
    n_ctx: int | None = None,
    gpu_layers: str | int | None = None,
    threads: int | None = None,
) -> RunOptions:
    """Flags (not None) over the Modelfile's parameters over the defaults (Ollama's)."""
    p = settings.parameters
    d = SamplingParams()
    flags = {
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "min_p": min_p,
        "repeat_penalty": repeat_penalty,
        "repeat_last_n": repeat_last_n,
        "seed": seed,
        "num_predict": max_tokens,
        "num_ctx": n_ctx,
        "num_thread": threads,
    }
    for name, value in flags.items():
        if value is not None:
            _check_flag(name, value)

    def pick(flag: Any, key: str, default: Any) -> Any:
        return flag if flag is not None else p.get(key, default)

    predict = pick(max_tokens, "num_predict", None)
    gpu = pick(gpu_layers, "num_gpu", AUTO)
    chosen_seed = pick(seed, "seed", d.seed)
    return RunOptions(
        sampling=SamplingParams(
            temperature=float(pick(temperature, "temperature", d.temperature)),
            top_k=int(pick(top_k, "top_k", d.top_k)),
            top_p=float(pick(top_p, "top_p", d.top_p)),
            min_p=float(pick(min_p, "min_p", d.min_p)),
            repeat_penalty=float(pick(repeat_penalty, "repeat_penalty", d.repeat_penalty)),
            repeat_last_n=int(pick(repeat_last_n, "repeat_last_n", d.repeat_last_n)),
            seed=None if chosen_seed is None or int(chosen_seed) < 0 else int(chosen_seed),
        ),
        max_tokens=None if predict is None or int(predict) < 0 else int(predict),
        stop=stop or settings.stop,
        system=system if system is not None else settings.system,
        n_ctx=pick(n_ctx, "num_ctx", None),
        gpu_layers=AUTO if gpu == -1 else gpu,
        threads=pick(threads, "num_thread", None),
        history=settings.messages,
    )


# The run flags under their Modelfile parameter names: one set of ranges for both.
FLAG_NAMES = {
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "min_p": "--min-p",
    "repeat_penalty": "--repeat-penalty",
    "repeat_last_n": "--repeat-last-n",
    "seed": "--seed",
    "num_predict": "--max-tokens",
    "num_ctx": "--ctx",
    "num_thread": "--threads",
}


def _check_flag(name: str, value: float | int) -> None:
    from localrun.errors import UsageError
    from localrun.models.modelfile import check_parameter

    try:
        check_parameter(name, value)
    except ValueError as e:
        flag = FLAG_NAMES[name]
        raise UsageError(
            str(e).replace(name, flag, 1), f"see 'localrun run --help' for {flag}"
        ) from None


def resolve_model(ref: str, reporter: Reporter | None = None) -> Path:
    """The GGUF file ``ref`` names (see :func:`resolve`)."""
    return resolve(ref, reporter).path


def load_model(
    ref: str,
    *,
    n_ctx: int | None = None,
    n_threads: int,
    gpu_layers: str | int = AUTO,
    path: Path | None = None,
    settings: Settings | None = None,
) -> LoadedModel:
    """Load a model with as many layers on the GPU(s) as fit (``gpu_layers``: auto, all, N).

    ``path`` skips resolving ``ref`` again when the caller already did. If a device runs
    out of memory, the load is retried with half the GPU layers, and the count that
    worked is remembered for this model, context and device.
    """
    if path is None:
        resolved = resolve(ref)
        path, settings = resolved.path, settings or resolved.settings
    settings = settings or Settings()
    start = time.perf_counter()
    notes: list[str] = []
    n_ctx = _fit_context(path, n_ctx, notes)
    plan, memory = _plan(path, n_ctx, gpu_layers)
    layers = plan.n_gpu_layers
    while True:
        options = LoadOptions(
            path=path,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_gpu_layers=layers,
            tensor_split=plan.split if layers else None,
            lora=settings.adapters,
        )
        try:
            model = backend.load(options)
            break
        except OutOfMemoryError:
            if layers == 0:
                raise
            layers //= 2
            notes.append(f"out of GPU memory: retried with {layers} GPU layers")
    if layers != plan.n_gpu_layers:
        plan = replace(plan, n_gpu_layers=layers, reason="after an out-of-memory retry")
        if memory is not None:
            remember(memory, layers)
            notes.append(f"remembered {layers} GPU layers for this model, context and device")
    elapsed = time.perf_counter() - start
    return LoadedModel(ref, path, model, elapsed, plan, notes, settings.template)


def _fit_context(path: Path, n_ctx: int | None, notes: list[str]) -> int | None:
    """An asked-for context, at most the trained one, and only if its KV cache can fit.

    As Ollama does, a context over the model's trained length is lowered to it, with a
    note. A context whose KV cache alone is larger than the machine's memory is refused
    before llama.cpp tries to allocate it.
    """
    if n_ctx is None:
        return None
    info = read_gguf(path)
    trained = int(info.arch_value("context_length") or 0)
    if trained and n_ctx > trained:
        notes.append(
            f"context lowered from {n_ctx} to {trained} tokens, the most this model was trained for"
        )
        n_ctx = trained
    from localrun.system import physical_memory

    needed = sum(model_sizes(info, n_ctx).kv_per_layer)
    memory = physical_memory()
    if memory and needed > memory:
        raise OutOfMemoryError(
            f"a context of {n_ctx} tokens needs about {needed / 1e9:.1f} GB for its KV cache, "
            f"more than this machine's {memory / 1e9:.1f} GB of memory",
            "use a smaller context (--ctx)",
        )
    return n_ctx


def _plan(path: Path, n_ctx: int | None, request: str | int) -> tuple[Plan, str | None]:
    """The offload plan, and the key under which a working count is remembered."""
    from localrun.backend.llamacpp import devices as gpu

    supported = gpu.supports_offload() if request != 0 else False
    devices = gpu.gpus() if supported else []
    if not devices:
        empty = ModelSizes((), (), 0, 0)
        return offload.plan(empty, [], request, offload_supported=supported or request == 0), None
    info = read_gguf(path)
    trained = int(info.arch_value("context_length") or 4096)
    ctx = n_ctx or min(trained, 4096)
    targets = [GPU(d.description or d.name, d.free_bytes, d.total_bytes) for d in devices]
    key = memory_key(path, ctx, tuple(t.name for t in targets))
    if request == AUTO and (count := remembered(key)) is not None:
        found = offload.plan(model_sizes(info, ctx), targets, count)
        return replace(found, reason="remembered from an earlier out-of-memory retry"), key
    return offload.plan(model_sizes(info, ctx), targets, request), key


def prompt_tokens(loaded: LoadedModel, request: Request) -> list[int]:
    """Tokenize a one-shot request: through the chat template if the model has one."""
    messages = [*request.history, Message("user", request.prompt)]
    if request.system:
        messages.insert(0, Message("system", request.system))
    return conversation_tokens(loaded, messages)


def conversation_tokens(loaded: LoadedModel, messages: Sequence[Message]) -> list[int]:
    """Tokenize a conversation, ready for the model's next answer.

    Chat models get their own template. Base models get the conversation as one text to
    continue: the system prompt, then each message, a blank line before each user turn.
    """
    model = loaded.model
    template = loaded.template
    limit = TOKENIZE_LIMIT_FACTOR * model.n_ctx
    chars = sum(len(m.content) for m in messages)
    if chars > MAX_CHARS_PER_TOKEN * model.n_ctx:
        raise PromptTooLongError(
            f"the prompt is {chars:,} characters, more than a context of {model.n_ctx} "
            "tokens can hold",
            "shorten the prompt, or raise the context with --ctx",
        )
    if template is None:
        parts: list[str] = []
        for m in messages:
            if parts and m.role in ("system", "user"):
                parts.append("\n\n")
            parts.append(m.content)
        return tokenize_bounded(model, "".join(parts), limit, parse_special=False)
    bos, eos = model.bos_token, model.eos_token
    text = render(
        template,
        messages,
        bos_token=model.token_text(bos) if bos is not None else "",
        eos_token=model.token_text(eos) if eos is not None else "",
    )
    tokens = tokenize_bounded(model, text, limit, parse_special=True)
    # Templates usually write the BOS token themselves; do not let it appear twice.
    if bos is not None and len(tokens) >= 2 and tokens[0] == tokens[1] == bos:
        del tokens[0]
    return tokens


def tokenize_bounded(model: Model, text: str, limit: int, *, parse_special: bool) -> list[int]:
    """Tokenize ``text``, refusing it without tokenizing it whole when it has over ``limit`` tokens.

    A tokenized prompt costs a Python int per token: a 20 MB text took 1.9 GB before it could
    be refused. A text long enough to be suspect is counted in slices first, each small.
    """
    probe = PROBE_CHARS_PER_TOKEN * limit
    if len(text) > probe:
        counted = 0
        for start in range(0, len(text), probe):
            piece = text[start : start + probe]
            counted += len(model.tokenize(piece, add_special=False, parse_special=parse_special))
            if counted > limit:
                raise PromptTooLongError(
                    f"the prompt is more than {limit} tokens but the context holds only "
                    f"{model.n_ctx}",
                    "shorten the prompt, or raise the context with --ctx",
                )
    return model.tokenize(text, add_special=True, parse_special=parse_special)


def check_fits(loaded: LoadedModel, n_prompt: int) -> None:
    """Refuse a prompt that leaves no room in the context for an answer."""
    n_ctx = loaded.model.n_ctx
    if n_prompt < n_ctx:
        return
    needed = (n_prompt + 512 + 255) // 256 * 256
    trained = loaded.model.n_ctx_train
    if trained and needed > trained:
        hint = f"shorten the prompt: this model was trained for at most {trained} tokens"
    else:
        hint = f"raise the context, for example --ctx {needed}, or shorten the prompt"
    raise PromptTooLongError(
        f"the prompt is {n_prompt} tokens but the context holds only {n_ctx}", hint
    )


class _StopMatcher:
    """Holds back text that might be the start of a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return the text safe to emit and whether a stop string was reached."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending = self.pending[:cut], ""
            return out, True
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:n]):
                    hold = n
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out) :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def generate(loaded: LoadedModel, request: Request) -> Iterator[Event]:
    """Answer a one-shot ``request``: text as it is produced, the statistics last."""
    start = time.perf_counter()
    tokens = prompt_tokens(loaded, request)
    check_fits(loaded, len(tokens))
    return generate_tokens(
        loaded,
        tokens,
        request.sampling,
        max_tokens=request.max_tokens,
        stop=request.stop,
        start=start,
    )


def generate_tokens(
    loaded: LoadedModel,
    tokens: list[int],
    sampling: SamplingParams,
    *,
    max_tokens: int | None = None,
    stop: Sequence[str] = (),
    start: float | None = None,
    stop_at_eog: bool = True,
) -> Iterator[Event]:
    """Generate after ``tokens``, yielding events and the statistics last.

    TTFT runs from ``start`` (the request) to the first sampled token; the decode rate is
    (sampled tokens - 1) / (time from the first to the last sampled token).
    """
    start = time.perf_counter() if start is None else start
    stats = Stats(load_s=loaded.load_s, prompt_tokens=len(tokens))
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    matcher = _StopMatcher(stop)
    first_at = last_at = 0.0
    sampled = 0
    stopped_by_string = False
    stats.finish_reason = "length"  # unless the model or a stop string ends it
    events = loaded.model.generate(tokens, sampling, stop_at_eog=stop_at_eog)
    try:
        for event in events:
            if isinstance(event, Prefilled):
                stats.prompt_evaluated = event.evaluated
                stats.prefill_s = event.seconds
                yield PromptEvaluated(len(tokens), event.evaluated, event.seconds)
                continue
            last_at = time.perf_counter()
            sampled += 1
            if sampled == 1:
                first_at = last_at
                yield FirstToken(first_at - start)
            if event.end_of_generation:
                stats.finish_reason = "stop"
                break
            stats.completion_tokens += 1
            text, stopped = matcher.feed(decoder.decode(event.piece))
            yield TextDelta(text, stats.completion_tokens)
            if stopped:
                stats.finish_reason = "stop"
                stopped_by_string = True
                break
            if max_tokens is not None and stats.completion_tokens >= max_tokens:
                break
    finally:
        events.close()
    if not stopped_by_string:
        tail = matcher.flush() + decoder.decode(b"", final=True)
        if tail:
            yield TextDelta(tail, stats.completion_tokens)
    end = time.perf_counter()
    stats.ttft_s = (first_at - start) if sampled else 0.0
    stats.decode_s = last_at - first_at if sampled else 0.0
    if sampled > 1 and stats.decode_s > 0:
        stats.decode_tokens_per_s = (sampled - 1) / stats.decode_s
    if stats.prefill_s > 0:
        stats.prefill_tokens_per_s = stats.prompt_evaluated / stats.prefill_s
    stats.total_s = loaded.load_s + (end - start)
    yield Finished(stats)
