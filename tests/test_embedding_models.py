"""Embedding models and rerankers loaded as such: the GGUF's pooling, many texts a pass, the
vectors llama.cpp's own tools give, and the HTTP endpoints over them (tiny models the suite
writes, :mod:`tests.tiny_encoder`)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localrun.backend import LoadOptions, load
from localrun.engine.embeds import cut, normalized
from localrun.server.embeddings import reranked
from tests.tiny_encoder import (
    write_tiny_bert,
    write_tiny_jina_bert_v2,
    write_tiny_nomic_bert,
    write_tiny_pooled_decoder,
    write_tiny_qwen3,
    write_tiny_reranker,
    write_tiny_xlm_roberta,
)

TEXTS = ["the sky is blue", "why is the sea green", "hello world", "a cat sat on the mat"]
# Each tiny model by kind, and its pooling: BERT's three poolings and reranker, a llama
# decoder, and each architecture docs/embeddings.md names (tests/tiny_encoder.py).
POOLED = {
    "mean": "mean", "cls": "cls", "last": "last", "rank": "rank", "decoder-last": "last",
    "nomic-bert": "mean", "jina-bert-v2": "mean", "xlm-roberta": "cls",
    "xlm-roberta-rank": "rank", "qwen3-last": "last", "qwen3-rank": "rank",
}  # fmt: skip
RERANKERS = [k for k, pooling in POOLED.items() if pooling == "rank"]
PAIRS = [("what colour is the sky", "the sky is blue"), ("hello", "a cat sat on the mat")]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("embedders")
    found = {p: write_tiny_bert(d / f"bert-{p}.gguf", pooling=p) for p in ("mean", "cls", "last")}
    found["rank"] = write_tiny_reranker(d / "reranker.gguf")
    found["decoder-last"] = write_tiny_pooled_decoder(d / "decoder-last.gguf")
    found["nomic-bert"] = write_tiny_nomic_bert(d / "nomic-bert.gguf")
    found["jina-bert-v2"] = write_tiny_jina_bert_v2(d / "jina-bert-v2.gguf")
    found["xlm-roberta"] = write_tiny_xlm_roberta(d / "bge-m3.gguf")
    found["xlm-roberta-rank"] = write_tiny_xlm_roberta(d / "bge-reranker.gguf", pooling="rank")
    found["qwen3-last"] = write_tiny_qwen3(d / "qwen3-embedding.gguf")
    found["qwen3-rank"] = write_tiny_qwen3(d / "qwen3-reranker.gguf", pooling="rank")
    # Trained on more than one micro-batch (512 tokens): a long text is read in chunks.
    found["qwen3-long"] = write_tiny_qwen3(d / "qwen3-long.gguf", n_ctx_train=2048)
    return found


@pytest.fixture(scope="module")
def loaded(models: dict[str, Path]) -> Iterator[dict[str, Any]]:
    out = {k: load(LoadOptions(p, n_threads=2)) for k, p in models.items() if k in POOLED}
    yield out
    for m in out.values():
        m.close()


def _tokens(model: Any, texts: list[str]) -> list[list[int]]:
    return [model.tokenize(t, add_special=True, parse_special=False) for t in texts]


@pytest.mark.parametrize("kind", POOLED)
def test_the_ggufs_pooling_is_the_models_and_many_texts_a_pass_give_each_ones_alone(
    loaded: dict[str, Any], kind: str
) -> None:
    model = loaded[kind]
    assert model.pooling == POOLED[kind]
    tokens = _tokens(model, TEXTS)
    together = model.embed_batch(tokens)
    alone = [model.embed_batch([t])[0] for t in tokens]
    # A reranker gives its classifier's outputs: one score, or Qwen3's "yes" and "no".
    width = {"qwen3-rank": 2}.get(kind, 1) if kind in RERANKERS else 64
    assert [len(v) for v in together] == [width] * len(TEXTS)
    for a, b in zip(together, alone, strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    if kind not in RERANKERS:  # the texts differ, and so do their vectors
        assert cosine(together[0], together[1]) < 0.999


@pytest.mark.parametrize("kind", POOLED)
def test_show_names_each_architecture_an_embedding_model_or_a_reranker(
    models: dict[str, Path], kind: str, cli: Any
) -> None:
    import json

    from localrun.models.facts import model_facts

    facts = model_facts(str(models[kind]))
    said = "rerank" if kind in RERANKERS else "embedding"
    assert facts.capabilities == (said,)
    shown = cli(["show", str(models[kind])])
    assert shown.exit_code == 0, shown.stderr
    lines = shown.stdout.splitlines()
    model = "reranker" if kind in RERANKERS else "embedding model"
    assert f"  chat template      no ({model})" in lines  # not "completion mode"
    assert f"  capabilities       {said}" in lines
    assert json.loads(cli(["show", str(models[kind]), "--json"]).stdout)["capabilities"] == [said]


def test_the_poolings_differ_on_one_model(models: dict[str, Path], loaded: dict[str, Any]) -> None:
    """mean, CLS and last of the same weights (the same seed): three other vectors."""
    vectors = [loaded[k].embed_batch(_tokens(loaded[k], TEXTS[:1]))[0] for k in ("mean", "cls")]
    vectors.append(loaded["last"].embed_batch(_tokens(loaded["last"], TEXTS[:1]))[0])
    assert cosine(vectors[0], vectors[1]) < 0.999 and cosine(vectors[1], vectors[2]) < 0.999


def test_the_vectors_are_llama_cpp_pythons_own(models: dict[str, Path]) -> None:
    """A second reference: llama-cpp-python's Llama(embedding=True), the model's own pooling."""
    from llama_cpp import Llama

    for kind in ("mean", "cls", "last", "decoder-last"):
        ref = Llama(str(models[kind]), embedding=True, verbose=False, n_ctx=512, n_threads=2)
        ours: Any = load(LoadOptions(models[kind], n_threads=2))
        try:
            for text in TEXTS:
                theirs = ref.embed(text, normalize=False)
                mine = ours.embed_batch(_tokens(ours, [text]))[0]
                assert cosine(mine, theirs) >= 0.9999, (kind, text)
        finally:
            ours.close()
            ref.close()


def test_a_reranker_reads_query_and_document_as_llama_server_joins_them(
    loaded: dict[str, Any],
) -> None:
    """BERT's: [CLS] query [SEP] document (no EOS in its vocabulary); XLM-RoBERTa's
    <s> query </s></s> document </s>; Qwen3-Reranker's: its rerank template filled in."""
    from tests.tiny_encoder import QWEN3_RERANK_TEMPLATE

    def plain(model: Any, text: str) -> list[int]:
        return model.tokenize(text, add_special=False, parse_special=False)  # type: ignore[no-any-return]

    q, d = PAIRS[0]
    model = loaded["rank"]
    assert model.pair_tokens(q, d) == [2, *plain(model, q), 3, *plain(model, d)]
    model = loaded["xlm-roberta-rank"]
    assert model.pair_tokens(q, d) == [0, *plain(model, q), 2, 2, *plain(model, d), 2]
    model = loaded["qwen3-rank"]
    filled = QWEN3_RERANK_TEMPLATE.replace("{query}", q).replace("{document}", d)
    expected = model.tokenize(filled, add_special=False, parse_special=True)
    assert model.pair_tokens(q, d) == expected
    assert model.token_text(expected[0]) == "<|im_start|>"  # a special token, not its letters


def test_a_generative_model_is_mean_pooled_as_before(tmp_path: Path) -> None:
    from tests.tinygguf import write_tiny_model

    model = load(LoadOptions(write_tiny_model(tmp_path / "m.gguf"), n_threads=2))
    try:
        assert model.pooling is None  # type: ignore[attr-defined]
        vector = model.embed(_tokens(model, ["the sky"])[0], 0)  # type: ignore[attr-defined]
        assert abs(sum(x * x for x in vector) - 1) < 1e-6
    finally:
        model.close()


def test_ollamas_truncate_keeps_the_end_token_and_refuses_without_it() -> None:
    assert cut([2, 5, 6, 7, 8, 3], 4, [3]) == [2, 5, 6, 3]
    assert cut([1, 5, 6, 7, 8], 3, []) == [1, 5, 6]
    assert cut([2, 5, 3], 4, [3]) == [2, 5, 3]
    with pytest.raises(Exception, match="the input is 6 tokens but the context holds only 4"):
        cut([2, 5, 6, 7, 8, 3], 4, None)


def test_show_gives_an_embedding_models_capabilities() -> None:
    from localrun.models.facts import capabilities

    assert capabilities("{{ tools }}", None, "mean") == ("embedding",)
    assert capabilities(None, None, "rank") == ("rerank",)
    assert capabilities("{{ tools }}", None, None) == ("completion", "tools")


def test_the_tokens_kept_at_a_cut_texts_end_are_the_tokenizers(loaded: dict[str, Any]) -> None:
    from localrun.engine.embeds import end_tokens

    assert end_tokens(loaded["mean"]) == [3]  # BERT's [SEP]
    assert end_tokens(loaded["decoder-last"]) == [2]  # EOS, Qwen3-Embedding's habit


def test_matryoshka_dimensions_cut_then_scale_again() -> None:
    assert normalized([3.0, 4.0, 12.0], 2) == pytest.approx([0.6, 0.8])
    assert normalized([0.0, 0.0]) == [0.0, 0.0]


def test_rerank_answers_most_relevant_first_in_jinas_shape() -> None:
    out = reranked("m", ["a", "b", "c"], [0.1, 2.0, -1.0], 2, True, 9)
    assert out["results"] == [
        {"index": 1, "relevance_score": 2.0, "document": {"text": "b"}},
        {"index": 0, "relevance_score": 0.1, "document": {"text": "a"}},
    ]
    assert "document" not in reranked("m", ["a"], [1.0], None, False, 1)["results"][0]


# -- the server, in process ---------------------------------------------------------------


def _calls(requests: list[tuple[str, dict[str, Any]]]) -> list[httpx.Response]:
    from localrun.server.app import create_app
    from localrun.server.config import ServeConfig
    from localrun.server.pool import ModelPool

    async def run() -> list[httpx.Response]:
        config = ServeConfig()
        pool = ModelPool(config)
        transport = httpx.ASGITransport(app=create_app(config, pool))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                return [await c.post(path, json=body, timeout=120) for path, body in requests]
        finally:
            await pool.close()

    return asyncio.run(run())


@pytest.mark.slow
def test_the_endpoints_embed_rerank_and_refuse_a_chat(
    models: dict[str, Path], localrun_home: Path
) -> None:
    from tests.served import create_model

    bert, reranker = "tiny-bert", "tiny-reranker"
    create_model(localrun_home, bert, f"FROM {models['mean']}\n")
    create_model(localrun_home, reranker, f"FROM {models['rank']}\n")
    docs = ["hello world", "the sky is blue", "a cat sat on the mat"]
    long = "the sky " * 400  # 800 words: past the 512-token context
    longer = "the sky " * 20_000  # past twice the context: was refused, where Ollama cuts it
    embed, old, oai, short, rank, chat, wrong, shown, ranker, cut_, refused, far, far_doc = _calls(
        [
            ("/api/embed", {"model": bert, "input": TEXTS}),
            ("/api/embeddings", {"model": bert, "prompt": TEXTS[0]}),
            ("/v1/embeddings", {"model": bert, "input": TEXTS[:2]}),
            ("/api/embed", {"model": bert, "input": TEXTS[0], "dimensions": 8}),
            ("/v1/rerank", {"model": reranker, "query": "the sky", "documents": docs, "top_n": 2}),
            ("/api/chat", {"model": bert, "messages": [{"role": "user", "content": "hi"}]}),
            ("/rerank", {"model": bert, "query": "the sky", "documents": docs}),
            ("/api/show", {"model": bert}),
            ("/api/show", {"model": reranker}),
            ("/api/embed", {"model": bert, "input": long}),
            ("/api/embed", {"model": bert, "input": long, "truncate": False}),
            ("/api/embed", {"model": bert, "input": longer}),
            ("/v1/rerank", {"model": reranker, "query": "the sky", "documents": [long, longer]}),
        ]
    )
    # The same first tokens, cut the same way: the same vector, however long the rest.
    assert far.status_code == 200 and far.json()["prompt_eval_count"] == 512
    assert far.json()["embeddings"] == cut_.json()["embeddings"]
    scores = {r["index"]: r["relevance_score"] for r in far_doc.json()["results"]}
    assert far_doc.status_code == 200 and scores[0] == pytest.approx(scores[1], abs=1e-6)
    assert cut_.status_code == 200 and cut_.json()["prompt_eval_count"] == 512
    assert refused.status_code == 400 and "context holds only 512" in refused.json()["error"]
    assert shown.json()["capabilities"] == ["embedding"]
    assert ranker.json()["capabilities"] == ["rerank"]
    vectors = embed.json()["embeddings"]
    assert embed.status_code == 200 and len(vectors) == 4
    assert all(abs(sum(x * x for x in v) - 1) < 1e-5 for v in vectors)
    assert old.json()["embedding"] == pytest.approx(vectors[0], abs=1e-5)
    assert oai.json()["data"][1]["embedding"] == pytest.approx(vectors[1], abs=1e-5)
    assert short.json()["embeddings"][0] == pytest.approx(normalized(vectors[0], 8), abs=1e-5)
    results = rank.json()["results"]
    assert rank.status_code == 200 and len(results) == 2
    assert results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert results[0]["document"]["text"] == docs[results[0]["index"]]
    assert chat.status_code == 400 and "it cannot chat" in chat.json()["error"]
    assert wrong.status_code == 400 and "is not a reranker" in wrong.json()["error"]


def test_a_pass_takes_no_more_texts_than_its_bounds() -> None:
    from localrun.backend.llamacpp.embedding import groups

    lengths = [5, 5, 5, 5, 500]
    assert groups(lengths, n_batch=512, n_seq=64, max_rows=10_000) == [range(0, 4), range(4, 5)]
    assert groups(lengths, n_batch=512, n_seq=3, max_rows=10_000) == [range(0, 3), range(3, 5)]
    # The output rows' bound (their logits never shrink in llama.cpp); a text alone may pass it.
    assert groups(lengths, n_batch=512, n_seq=64, max_rows=10) == [
        range(0, 2), range(2, 4), range(4, 5),
    ]  # fmt: skip


@pytest.mark.slow
def test_the_cli_embeds_lines_and_reranks_documents(
    models: dict[str, Path], loaded: dict[str, Any], localrun_home: Path
) -> None:
    import json

    from tests.proc import run

    lines = "\n".join(TEXTS[:3]).encode()
    done = run(localrun_home, "embed", str(models["cls"]), stdin=lines)
    assert done.code == 0, done.stderr
    vectors = [json.loads(line) for line in done.stdout.splitlines()]
    expected = loaded["cls"].embed_batch(_tokens(loaded["cls"], TEXTS[:3]))
    for got, want in zip(vectors, expected, strict=True):
        assert got == pytest.approx(normalized(want), abs=1e-5)
    short = run(localrun_home, "embed", str(models["cls"]), TEXTS[0], "--dimensions", "3")
    assert json.loads(short.stdout) == pytest.approx(normalized(expected[0], 3), abs=1e-5)

    docs = ["hello world", "the sky is blue", "a cat sat on the mat"]
    ranked = run(localrun_home, "rerank", str(models["rank"]), "the sky", "--top-n", "2",
                 stdin="\n".join(docs).encode())  # fmt: skip
    assert ranked.code == 0, ranked.stderr
    results = [json.loads(line) for line in ranked.stdout.splitlines()]
    model = loaded["rank"]
    scores = [model.embed_batch([model.pair_tokens("the sky", d)])[0][0] for d in docs]
    best = sorted(range(3), key=lambda i: -scores[i])[:2]
    assert [r["index"] for r in results] == best
    assert [r["document"] for r in results] == [docs[i] for i in best]
    assert results[0]["relevance_score"] == pytest.approx(scores[best[0]], abs=1e-5)

    refused = run(localrun_home, "rerank", str(models["mean"]), "q", stdin=b"a doc\n")
    assert refused.code == 2 and "is not a reranker" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


# -- llama.cpp's own llama-embedding, built from the pinned sdist into the test cache ---------

TOOLS = Path.home() / ".cache" / "localrun-tests"


def llama_embedding() -> Path:
    """llama-embedding, built once beside llama-server and llama-perplexity (the same source,
    build folder and flags, benchmarks/llama_tools.py; examples switched on for this one)."""
    import importlib.metadata
    import os
    import subprocess

    from benchmarks.llama_tools import build_tool

    build = TOOLS / f"llama.cpp-{importlib.metadata.version('llama-cpp-python')}" / "build-no-amx"
    binary = build / "bin" / "llama-embedding"
    if binary.exists():
        return binary
    if not (build.parent / "src").exists():
        build_tool("llama-server", cache=TOOLS)  # fetches the sdist's source and configures
    source = str(build.parent / "src")
    subprocess.run(["cmake", "-S", source, "-B", str(build), "-DLLAMA_BUILD_EXAMPLES=ON"],
                   check=True, capture_output=True)  # fmt: skip
    jobs = str(os.cpu_count() or 2)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-embedding", "-j", jobs],
                   check=True, capture_output=True)  # fmt: skip
    return binary


# llama.cpp's tools print through a log thread that is never flushed at exit (its logger is
# leaked on purpose): the process ended while the thread still held the array in 25 of 30 runs
# of a reranker's two rows. Preloaded into llama-embedding, this makes the exit wait a moment,
# which the thread uses to print the rest.
LINGER = """
#include <unistd.h>
__attribute__((destructor)) static void linger(void) { usleep(300000); }
"""


def _linger(binary: Path) -> Path:
    """The preloaded library of LINGER, compiled once beside ``binary``."""
    import subprocess

    library = binary.parent / "linger-at-exit.so"
    if not library.exists():
        source = binary.parent / "linger-at-exit.c"
        source.write_text(LINGER)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library


def their_vectors(
    binary: Path, model: Path, texts: list[str], normalize: int, n_ctx: int = 512
) -> list[list[float]]:
    """llama-embedding's vectors of ``texts`` (a reranker's pair: query TAB document), run
    with :data:`LINGER` and again until the array it prints is whole (cut short, empty or with
    a piece lost in its middle, it had printed only part of what it computed). A rank model's
    scores are its first values: the tool prints a whole vector's width from a row that holds
    only the scores (what lies past them is whatever memory held, ``nan`` at times, read as
    null here)."""
    import json
    import os
    import re
    import subprocess

    env = {**os.environ, "LD_LIBRARY_PATH": str(binary.parent),
           "LD_PRELOAD": str(_linger(binary))}  # fmt: skip
    for _ in range(30):
        done = subprocess.run(
            [str(binary), "-m", str(model), "-p", "\n".join(texts), "-t", "2", "-c", str(n_ctx),
             "--embd-output-format", "array", "--embd-normalize", str(normalize)],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        out = done.stdout.strip()
        try:  # cut short, or with a piece lost in its middle: run it again
            found: list[list[float]] = json.loads(re.sub(r"-?\b(nan|inf)\b", "null", out))
        except json.JSONDecodeError:
            continue
        if len(found) == len(texts) and len({len(v) for v in found}) == 1:
            return found
    raise AssertionError("llama-embedding printed no whole array in 30 runs")


def _built_llama_embedding() -> Path:
    import os
    import shutil

    if shutil.which("cmake") is None:
        if os.environ.get("CI"):
            pytest.fail("cmake is needed to build llama-embedding")
        pytest.skip("cmake is needed to build llama-embedding")
    return llama_embedding()


@pytest.mark.slow
@pytest.mark.parametrize("kind", POOLED)
def test_the_vectors_are_llama_embeddings_for_each_pooling(
    models: dict[str, Path], loaded: dict[str, Any], kind: str
) -> None:
    """cosine >= 0.9999 with llama.cpp's own tool (its default --embd-normalize 2), for mean,
    CLS and last pooling of an encoder, last pooling of a decoder, each architecture's form;
    a reranker's scores within 1e-4, of texts and of query-document pairs."""
    binary = _built_llama_embedding()
    model = loaded[kind]
    if kind not in RERANKERS:
        theirs = their_vectors(binary, models[kind], TEXTS, 2)
        ours = model.embed_batch(_tokens(model, TEXTS))
        for mine, their in zip(ours, theirs, strict=True):
            assert cosine(normalized(mine), their) >= 0.9999, kind
        return
    theirs = their_vectors(binary, models[kind], TEXTS, -1)
    scores = model.embed_batch(_tokens(model, TEXTS))
    width = len(scores[0])  # the classifier's outputs: what the tool has beyond them is noise
    assert [s for s in scores] == [pytest.approx(t[:width], abs=1e-4) for t in theirs]
    if kind == "rank":
        return  # llama-embedding ends a WordPiece pair with [SEP]; llama-server, as we, not
    # A pair as llama-embedding joins it (its rerank template, or the separators).
    theirs = their_vectors(binary, models[kind], [f"{q}\t{d}" for q, d in PAIRS], -1)
    scores = model.embed_batch([model.pair_tokens(q, d) for q, d in PAIRS])
    assert [s for s in scores] == [pytest.approx(t[:width], abs=1e-4) for t in theirs]


LONG = "the sky is blue and the sea is green " * 140  # 1,262 tokens of the tiny Qwen3's


def test_a_causal_last_token_model_reads_a_long_text_in_micro_batches(
    models: dict[str, Path],
) -> None:
    """A causal model pooled by its last token keeps llama.cpp's ordinary micro-batch (512)
    however long its trained context, and reads a longer text over several decodes: the same
    vector as the whole text read in one micro-batch (llama-cpp-python's Llama, 2,048). An
    encoder, and a causal model pooled by mean, still read a text in one micro-batch."""
    import llama_cpp.llama_cpp as lc
    from llama_cpp import Llama

    ours: Any = load(LoadOptions(models["qwen3-long"], n_threads=2))
    ref = Llama(str(models["qwen3-long"]), embedding=True, verbose=False, n_ctx=2048,
                n_batch=2048, n_ubatch=2048, n_threads=2)  # fmt: skip
    try:
        assert (ours.n_batch, int(lc.llama_n_ubatch(ours._ctx))) == (2048, 512)
        tokens = ours.tokenize(LONG, add_special=True, parse_special=False)
        assert len(tokens) > 2 * 512  # three decodes
        whole = ref.embed(LONG, normalize=False)
        short = _tokens(ours, TEXTS[:2])
        long_, *shorts = ours.embed_batch([tokens, *short])  # alone, then the short two
        assert cosine(long_, whole) >= 0.9999
        assert shorts == [pytest.approx(v, abs=1e-5) for v in ours.embed_batch(short)]
    finally:
        ours.close()
        ref.close()
    for path in (
        write_tiny_bert(models["qwen3-long"].with_name("bert-2k.gguf")),
        write_tiny_pooled_decoder(models["qwen3-long"].with_name("mean-2k.gguf"),
                                  pooling="mean", n_ctx_train=2048),
    ):  # fmt: skip
        other: Any = load(LoadOptions(path, n_threads=2))
        try:
            assert int(lc.llama_n_ubatch(other._ctx)) == other.n_batch
        finally:
            other.close()


@pytest.mark.slow
def test_a_long_text_read_in_micro_batches_is_llama_embeddings(models: dict[str, Path]) -> None:
    """The same long text as llama-embedding reads it (-c 2048: one call, which llama.cpp
    splits into micro-batches of 512 itself)."""
    binary = _built_llama_embedding()
    ours: Any = load(LoadOptions(models["qwen3-long"], n_threads=2))
    try:
        mine = ours.embed_batch([ours.tokenize(LONG, add_special=True, parse_special=False)])
    finally:
        ours.close()
    (theirs,) = their_vectors(binary, models["qwen3-long"], [LONG], 2, n_ctx=2048)
    assert cosine(normalized(mine[0]), theirs) >= 0.9999


def _rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


@pytest.mark.slow
def test_a_pass_keeps_few_output_rows_with_a_long_vocabulary(tmp_path: Path) -> None:
    """llama.cpp keeps a row of logits beside every output row, in a buffer that never
    shrinks: 500 rows of a 200,000-token vocabulary would hold 400 MB for as long as the model
    stays loaded. A pass takes no more texts than EMBED_OUTPUT_BYTES of rows."""
    from localrun.backend.llamacpp.embedding import EMBED_OUTPUT_BYTES

    path = write_tiny_bert(tmp_path / "wide-vocab.gguf", n_vocab=200_000)
    model = load(LoadOptions(path, n_threads=2))
    try:
        texts = [" ".join(TEXTS) + f" {i}" for i in range(24)]  # 20 tokens each
        tokens = _tokens(model, texts)
        assert sum(len(t) for t in tokens) > 450
        before = _rss_mb()
        first = model.embed_batch(tokens)  # type: ignore[attr-defined]
        grown = _rss_mb() - before
        assert grown < 2 * (EMBED_OUTPUT_BYTES >> 20), f"a pass grew memory by {grown:.0f} MB"
        again = model.embed_batch(tokens)  # type: ignore[attr-defined]
        assert _rss_mb() - before < 2 * (EMBED_OUTPUT_BYTES >> 20)  # nothing piles up
        assert first == again
    finally:
        model.close()
