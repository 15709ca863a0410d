"""Images for vision models, on a tiny text model and a tiny projector the suite makes.

Both have random weights: what the model says is noise. What is tested is the plumbing: an
image reaches the model on every path (the engine, ``run --image``, a path in the prompt,
``/image`` in the chat, a batch file, both APIs), its tokens are counted and its encoding is
timed apart, the engine and the prompt cache handle its cells, and bad input fails in one line.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ollama
import openai
import PIL.Image
import pytest
from rich.console import Console

from localrun import engine
from localrun.backend import SamplingParams
from localrun.engine.answerer import LocalAnswerer
from localrun.engine.batch import Job, collect, image_cut
from localrun.engine.chat import ChatSession, Options
from localrun.engine.prompt_cache import PromptCache
from localrun.engine.runner import runner_of
from localrun.errors import ModelLoadError, PromptTooLongError, UsageError
from localrun.images import Image, read_image, split_image_paths
from localrun.models.resolve import Settings
from localrun.prompt.build import conversation_prompt
from localrun.prompt.template import Message
from tests.served import Server, create_model, serving
from tests.tinygguf import CHATML_TEMPLATE, write_tiny_projector

IMAGE_TOKENS = 16  # the tiny projector sees every picture as 4 x 4 patches
GREEDY = SamplingParams(temperature=0.0, seed=1)


def picture(path: Path, seed: int, size: tuple[int, int] = (40, 30), kind: str = "PNG") -> Path:
    """A picture of random pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path, kind)
    return path


@pytest.fixture(scope="module")
def projector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_projector(tmp_path_factory.mktemp("vision") / "mmproj-tiny-f32.gguf")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("pictures")
    return [picture(folder / f"picture-{i}.png", i) for i in range(3)]


@pytest.fixture(scope="module")
def loaded(tiny_chat_model: Path, projector: Path) -> Iterator[engine.LoadedModel]:
    found = engine.load_model(
        "seer", n_ctx=512, n_threads=2, path=tiny_chat_model,
        settings=Settings(projector=projector), n_seq=2,
    )  # fmt: skip
    found.prompt_cache = False
    yield found
    found.close()


def answer(loaded: engine.LoadedModel, request: engine.Request) -> tuple[str, engine.Stats]:
    """The whole answer to ``request``, and its statistics."""
    parts, stats = [], None
    for event in engine.generate(loaded, request):
        if isinstance(event, engine.TextDelta):
            parts.append(event.text)
        elif isinstance(event, engine.Finished):
            stats = event.stats
    assert stats is not None
    return "".join(parts), stats


def ask(loaded: engine.LoadedModel, text: str, *images: Path) -> tuple[str, engine.Stats]:
    pictures = [read_image(p) for p in images]
    return answer(loaded, engine.Request.of(text, sampling=GREEDY, max_tokens=8, images=pictures))


# -- the engine ------------------------------------------------------------------------------


def test_an_image_reaches_the_model_and_counts_apart(
    loaded: engine.LoadedModel, pictures: list[Path]
) -> None:
    _, plain = ask(loaded, "the sky is")
    text, stats = ask(loaded, "the sky is", pictures[0])
    assert stats.images == 1 and stats.image_tokens == IMAGE_TOKENS
    assert stats.prompt_tokens == plain.prompt_tokens + IMAGE_TOKENS
    assert stats.completion_tokens == 8 and text
    assert 0 < stats.image_encode_s < stats.ttft_s
    assert stats.prefill_s > 0  # the text's and the image's decoding, without the encoding
    # Each picture gives its own answer; the same picture, the same answer.
    answers = {ask(loaded, "the sky is", p)[0] for p in pictures}
    assert len(answers) == len(pictures)
    again, _ = ask(loaded, "the sky is", pictures[0])
    assert again == text


def test_a_repeated_prompt_reuses_the_images_cells(
    loaded: engine.LoadedModel, pictures: list[Path]
) -> None:
    first, _ = ask(loaded, "why is", pictures[1])
    again, stats = ask(loaded, "why is", pictures[1])
    assert again == first
    assert stats.prompt_evaluated == 1  # the rest, image and all, was in the slot's cells
    assert stats.images == 1 and stats.image_encode_s == 0.0


def test_two_images_in_one_message_and_one_twice(
    loaded: engine.LoadedModel, pictures: list[Path]
) -> None:
    _, two = ask(loaded, "hello", pictures[0], pictures[1])
    assert two.images == 2 and two.image_tokens == 2 * IMAGE_TOKENS
    _, twice = ask(loaded, "hello", pictures[2], pictures[2])
    assert twice.images == 2 and twice.prompt_tokens == two.prompt_tokens


def test_sequences_with_images_in_one_batch_answer_as_alone(
    loaded: engine.LoadedModel, pictures: list[Path]
) -> None:
    model = loaded.model
    prompts = [
        conversation_prompt(
            model, loaded.template, [Message("user", "the world", images=(read_image(p),))]
        )
        for p in pictures[:2]
    ]
    batch = runner_of(loaded).engine
    alone = [
        collect(batch.submit(Job(p.tokens, GREEDY, max_tokens=8, images=p.images)))[0]
        for p in prompts
    ]
    for slot in (0, 1):  # nothing kept from the runs alone: each reads its picture again
        batch.model.forget(slot)
    batch.cells.warm.clear()
    streams = [batch.submit(Job(p.tokens, GREEDY, max_tokens=8, images=p.images)) for p in prompts]
    assert [collect(s)[0] for s in streams] == alone


def test_the_prompt_cache_keeps_a_prefix_with_an_image_by_its_digest(
    tiny_chat_model: Path, projector: Path, pictures: list[Path]
) -> None:
    def run(
        image: Path, question: str, history_image: Path | None = None
    ) -> tuple[str, engine.Stats]:
        found = engine.load_model(
            "seer", n_ctx=512, n_threads=2, path=tiny_chat_model,
            settings=Settings(projector=projector),
        )  # fmt: skip
        try:
            shown = (read_image(history_image or image),)
            history = [
                Message("user", "look at this " * 12, images=shown),
                Message("assistant", "a picture " * 12),
            ]
            request = engine.Request.of(question, history=history, sampling=GREEDY, max_tokens=4)
            answered = answer(found, request)
            runner_of(found).stop()  # the writer thread has stored the prefix
            return answered
        finally:
            found.close()

    cold_text, cold = run(pictures[0], "and now?")
    assert cold.prompt_from_disk == 0
    warm_text, warm = run(pictures[0], "and now?")
    assert warm.prompt_from_disk > IMAGE_TOKENS and warm_text == cold_text
    assert warm.image_encode_s == 0.0  # its cells came back: nothing to encode
    # The same words about another picture: nothing of the first picture's cells comes back.
    _, other = run(pictures[1], "and now?")
    assert other.prompt_from_disk == 0 and other.image_encode_s > 0


def test_a_cut_never_splits_an_image() -> None:
    tokens = [1, 2, -5, -5, -5, 3, -7, -7, 4]
    assert [image_cut(tokens, n) for n in range(len(tokens) + 1)] == [
        0, 1, 2, 2, 2, 5, 6, 6, 8, 9,
    ]  # fmt: skip


def test_the_prompt_cache_names_an_image_prefix_by_its_digests(tmp_path: Path) -> None:
    cache = PromptCache("m", {"layout": 1})
    tokens = [1, *([-9] * 70), 2]
    assert not cache.has(tokens, {-9: "a" * 64})
    cache.save(tokens, b"state", {-9: "a" * 64})
    cache.close()
    assert cache.has(tokens, {-9: "a" * 64})
    assert not cache.has(tokens, {-9: "b" * 64})  # the same 31-bit id, another picture


def test_submit_refuses_image_ids_it_was_not_given(loaded: engine.LoadedModel) -> None:
    batch = runner_of(loaded).engine
    with pytest.raises(UsageError, match="outside this model's vocabulary"):
        batch.submit(Job([1, -3, -3, 5], GREEDY))


# -- bad input -------------------------------------------------------------------------------


def test_a_mismatched_projector_is_named(tiny_chat_model: Path, tmp_path: Path) -> None:
    wrong = write_tiny_projector(tmp_path / "mmproj-wrong.gguf", n_embd_text=32)
    with pytest.raises(ModelLoadError) as caught:
        engine.load_model(
            "seer", n_threads=1, path=tiny_chat_model, settings=Settings(projector=wrong)
        )
    assert "mmproj-wrong.gguf does not match the model" in caught.value.message
    assert "n_embd = 64" in caught.value.message and "n_embd = 32" in caught.value.message


def test_images_for_a_text_model_are_refused(
    cli: Any, tiny_chat_model: Path, tmp_path: Path
) -> None:
    image = picture(tmp_path / "cat.png", 1)
    result = cli(["run", str(tiny_chat_model), "--image", str(image), "what is it"])
    assert result.exit_code == 2
    assert "reads no images: it has no projector (mmproj)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.fixture
def seer(cli: Any, tiny_chat_model: Path, projector: Path, tmp_path: Path) -> str:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {tiny_chat_model}\nFROM {projector}\n")
    assert cli(["create", "seer", "-f", str(modelfile)]).exit_code == 0
    return "seer"


def test_unreadable_and_huge_images_fail_in_one_line(cli: Any, seer: str, tmp_path: Path) -> None:
    not_a_picture = tmp_path / "notes.png"
    not_a_picture.write_text("not a picture")
    huge = tmp_path / "huge.png"
    with huge.open("wb") as f:
        f.truncate(21 * 1000**2)  # sparse: 21 MB on paper, nothing on disk
    bomb = tmp_path / "bomb.png"
    PIL.Image.new("L", (9000, 9000)).save(bomb, "PNG")  # 81 megapixels in about 80 KB
    cases = {
        not_a_picture: (2, "cannot read the image"),
        huge: (1, "is 21.0 MB, more than 20 MB"),  # HTTP's 413 in the server
        bomb: (2, "9000x9000 pixels, more than 64 megapixels"),
        tmp_path / "missing.png": (2, "no image at"),
    }
    for path, (code, expected) in cases.items():
        result = cli(["run", seer, "--image", str(path), "what is it"])
        assert result.exit_code == code, (path, result.stderr)
        assert expected in result.stderr and result.stderr.count("\n") == 1, result.stderr


# -- the CLI, the chat and batches -----------------------------------------------------------


def test_run_with_an_image_flag_and_a_path_in_the_prompt(
    cli: Any, seer: str, pictures: list[Path]
) -> None:
    flag = cli(["run", seer, "--image", str(pictures[0]), "--verbose", "--seed", "1",
                "--temperature", "0", "--max-tokens", "6", "describe"])  # fmt: skip
    assert flag.exit_code == 0, flag.stderr
    assert f"1 image, {IMAGE_TOKENS} tokens, encoded in" in flag.stderr
    inline = cli(["run", seer, "--verbose", "--seed", "1", "--temperature", "0",
                  "--max-tokens", "6", f"describe {pictures[0]}"])  # fmt: skip
    assert inline.exit_code == 0 and f"1 image, {IMAGE_TOKENS} tokens" in inline.stderr
    assert inline.stdout == flag.stdout  # the same picture and words: the same answer


def test_image_paths_in_a_prompt_are_read_as_ollama_reads_them(tmp_path: Path) -> None:
    spaced = picture(tmp_path / "my cat.JPG", 3, kind="JPEG")
    plain = picture(tmp_path / "dog.webp", 4, kind="WEBP")
    prompt = f"compare {str(spaced).replace(' ', chr(92) + ' ')} and '{plain}'. ./nothing.png"
    text, found = split_image_paths(prompt)
    assert found == [spaced, plain]
    assert text == "compare and . ./nothing.png"


def test_chat_image_command_attaches_to_the_next_message(
    loaded: engine.LoadedModel, pictures: list[Path]
) -> None:
    from localrun.cli.chat import ChatUI

    console = Console(width=160, record=True, color_system=None, force_terminal=False)
    session = ChatSession(LocalAnswerer(loaded))
    session.options = Options(GREEDY, max_tokens=6)
    ui = ChatUI(session, console, live=False)
    lines = iter([f"/image {pictures[0]}", "what is it", f"and this? {pictures[1]}", "/bye"])
    ui.run(lambda prompt: next(lines))
    shown = console.export_text()
    assert f"Added {pictures[0]}: 1 image waits for your next message." in shown
    users = [m for m in session.messages if m.role == "user"]
    assert [len(m.images) for m in users] == [1, 1]
    assert users[1].content == "and this?"
    assert shown.count("1 image encoded in") == 1  # the second turn's first image was kept
    assert "2 images encoded in" in shown


def saved_chat(loaded: engine.LoadedModel, image: Path, path: Path) -> Path:
    """A chat of one turn about ``image``, saved to ``path``."""
    session = ChatSession(LocalAnswerer(loaded))
    session.options = Options(GREEDY, max_tokens=2)
    list(session.ask("look", [read_image(image)]))
    session.save(path)
    return path


def blind_chat() -> ChatSession:
    """A chat with a text model."""
    from tests.scripted import ScriptedModel

    model = ScriptedModel([b"hi"], chat_template=CHATML_TEMPLATE)
    text = engine.LoadedModel(name="t", path=Path("t.gguf"), model=model, load_s=0.1)
    return ChatSession(LocalAnswerer(text))


def test_a_saved_chat_keeps_its_images(
    loaded: engine.LoadedModel, pictures: list[Path], tmp_path: Path
) -> None:
    saved = json.loads(saved_chat(loaded, pictures[0], tmp_path / "chat.json").read_text())
    assert base64.b64decode(saved["messages"][0]["images"][0]) == pictures[0].read_bytes()
    other = ChatSession(LocalAnswerer(loaded))
    other.load(tmp_path / "chat.json")
    assert other.messages[0].images[0].digest == read_image(pictures[0]).digest


def test_a_chat_with_a_text_model_refuses_the_image_command(tmp_path: Path) -> None:
    from localrun.cli.chat import ChatUI

    console = Console(width=160, record=True, color_system=None, force_terminal=False)
    ui = ChatUI(blind_chat(), console, live=False)
    lines = iter([f"/image {tmp_path}/x.png", "/bye"])
    ui.run(lambda prompt: next(lines))
    assert "this model reads no images" in console.export_text()


def test_batch_lines_with_images(cli: Any, seer: str, pictures: list[Path], tmp_path: Path) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(pictures[1].read_bytes()).decode()
    lines = [
        {"id": "file", "prompt": "what", "images": [str(pictures[0])], "seed": 1},
        {"id": "url", "messages": [{"role": "user", "content": "what", "images": [data_url]}]},
        {"id": "none", "prompt": "what"},
        {"id": "bad", "prompt": "what", "images": [str(tmp_path / "missing.png")]},
    ]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = cli(["run", seer, "--batch", str(batch), "--max-tokens", "4"])
    assert result.exit_code == 1  # the bad line
    records = {r["id"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert records["file"]["stats"]["images"] == 1
    assert records["url"]["stats"]["image_tokens"] == IMAGE_TOKENS
    assert records["none"]["stats"]["images"] == 0
    assert "no image at" in records["bad"]["error"]


# -- the APIs --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_chat_model: Path, projector: Path
) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("vision-serve-home")
    create_model(home, "seer", f"FROM {tiny_chat_model}\nPROJECTOR {projector}\n")
    create_model(home, "blind", f"FROM {tiny_chat_model}\n")
    with serving(home, "--parallel", "2") as s:
        yield s


FAST = {"num_predict": 6, "seed": 1, "temperature": 0}


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_ollama_generate_and_chat_take_images(server: Server, pictures: list[Path]) -> None:
    client = ollama.Client(host=server.url)
    plain = client.generate(model="seer", prompt="what", options=FAST)
    seen = client.generate(model="seer", prompt="what", images=[b64(pictures[0])], options=FAST)
    assert seen.prompt_eval_count == (plain.prompt_eval_count or 0) + IMAGE_TOKENS
    assert seen.response and not seen.context  # an image's ids are not handed out
    other = client.generate(model="seer", prompt="what", images=[b64(pictures[1])], options=FAST)
    assert other.response != seen.response
    chat = client.chat(
        model="seer",
        messages=[{"role": "user", "content": "what", "images": [pictures[0].read_bytes()]}],
        options=FAST,
        stream=True,
    )
    parts = list(chat)
    assert parts[-1].prompt_eval_count and parts[-1].prompt_eval_count > IMAGE_TOKENS
    assert "".join(p.message.content or "" for p in parts)


def test_show_lists_vision_among_the_capabilities(server: Server) -> None:
    client = ollama.Client(host=server.url)
    assert list(client.show("seer").capabilities or []) == ["completion", "vision"]
    assert list(client.show("blind").capabilities or []) == ["completion"]


def test_openai_chat_takes_data_urls(server: Server, pictures: list[Path]) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)

    def ask(content: Any) -> Any:
        return client.chat.completions.create(
            model="seer", messages=[{"role": "user", "content": content}],
            max_tokens=6, seed=1, temperature=0,
        )  # fmt: skip

    plain = ask("what")
    url = f"data:image/png;base64,{b64(pictures[0])}"
    parts = [{"type": "text", "text": "what"}, {"type": "image_url", "image_url": {"url": url}}]
    seen = ask(parts)
    assert seen.usage and plain.usage
    assert seen.usage.prompt_tokens == plain.usage.prompt_tokens + IMAGE_TOKENS
    assert seen.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="does not fetch images from URLs"):
        ask([{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}])


def test_the_apis_refuse_what_cannot_be_read(server: Server, pictures: list[Path]) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        blind = http.post(
            "/api/generate", json={"model": "blind", "prompt": "x", "images": [b64(pictures[0])]}
        )
        assert blind.status_code == 400 and "blind reads no images" in blind.text
        garbage = http.post(
            "/api/chat",
            json={
                "model": "seer",
                "messages": [{"role": "user", "content": "x", "images": ["!!"]}],
            },
        )
        assert garbage.status_code == 400 and "is not base64" in garbage.text
        text = base64.b64encode(b"just text").decode()
        unreadable = http.post(
            "/api/generate", json={"model": "seer", "prompt": "x", "images": [text]}
        )
        assert unreadable.status_code == 400 and "cannot read the image" in unreadable.text
        assert http.get("/api/version").status_code == 200  # the server goes on


def test_images_decode_upright_and_flat() -> None:
    buf = io.BytesIO()
    PIL.Image.new("RGBA", (3, 2), (0, 0, 0, 0)).save(buf, "PNG")
    from localrun.images import decode_rgb

    width, height, rgb = decode_rgb(Image(buf.getvalue(), "clear.png"))
    assert (width, height) == (3, 2) and rgb == b"\xff" * 18  # transparent: on white


def test_remote_engines_get_pictures_as_data_urls(pictures: list[Path]) -> None:
    from localrun.remote.client import _content

    image = read_image(pictures[0])
    parts = _content(Message("user", "what", images=(image,)))
    assert isinstance(parts, list) and parts[-1] == {"type": "text", "text": "what"}
    url = parts[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == pictures[0].read_bytes()
    assert _content(Message("user", "plain")) == "plain"


def test_a_picture_that_fails_fails_its_request_alone(
    loaded: engine.LoadedModel, pictures: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = loaded.model
    real = model.eval_image  # type: ignore[attr-defined]
    bad = read_image(pictures[2]).digest

    def eval_image(chunk: Any, seq: int, pos: int) -> Any:
        if chunk.digest == bad:
            raise UsageError("llama.cpp could not encode the image")
        return real(chunk, seq, pos)

    monkeypatch.setattr(model, "eval_image", eval_image)
    batch = runner_of(loaded).engine
    prompts = [
        conversation_prompt(model, loaded.template, [Message("user", "x", images=(read_image(p),))])
        for p in (pictures[2], pictures[0])
    ]
    streams = [batch.submit(Job(p.tokens, GREEDY, max_tokens=4, images=p.images)) for p in prompts]
    with pytest.raises(UsageError, match="could not encode"):
        collect(streams[0])
    assert collect(streams[1])[1].completion_tokens == 4
    assert batch.alive


def test_a_client_cannot_name_a_projector_on_the_servers_disk(
    server: Server, projector: Path
) -> None:
    client = ollama.Client(host=server.url)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        r = http.post(
            "/api/create",
            json={"model": "sneaky", "modelfile": f"FROM blind\nPROJECTOR {projector}\n"},
        )
        # Refused, not dropped in silence (it was a 200 without the projector once).
        assert r.status_code == 400 and "names a projector (PROJECTOR" in r.text, r.text
    assert not any((m.model or "").startswith("sneaky") for m in client.list().models)
    # A model made from a vision model keeps its base's projector.
    client.create(model="seer-too", from_="seer", system="Be brief.")
    assert list(client.show("seer-too").capabilities or []) == ["completion", "vision"]


def test_a_pulled_vision_model_reads_a_picture(
    hub: Any, cli: Any, tiny_chat_model: Path, projector: Path, pictures: list[Path]
) -> None:
    hub.add_repo(
        "org/seer-GGUF",
        {
            "seer-Q8_0.gguf": tiny_chat_model.read_bytes(),
            "mmproj-seer-F16.gguf": projector.read_bytes(),
        },
    )
    ref = "hf.co/org/seer-GGUF:Q8_0"
    pulled = cli(["pull", ref, "--json"])
    assert pulled.exit_code == 0, pulled.stderr
    assert json.loads(pulled.stdout)["projector"] == "mmproj-seer-F16.gguf"
    shown = cli(["show", ref])
    assert "mmproj-seer-F16.gguf" in shown.stdout and "completion, vision" in shown.stdout
    result = cli(["run", ref, "--verbose", "--max-tokens", "4", f"what is in {pictures[0]}"])
    assert result.exit_code == 0, result.stderr
    assert f"1 image, {IMAGE_TOKENS} tokens" in result.stderr


def test_a_saved_chat_with_pictures_is_refused_by_a_text_model(
    loaded: engine.LoadedModel, pictures: list[Path], tmp_path: Path
) -> None:
    path = saved_chat(loaded, pictures[0], tmp_path / "chat.json")
    blind = blind_chat()
    list(blind.ask("before"))
    with pytest.raises(UsageError, match="holds pictures, and this model reads no images"):
        blind.load(path)
    assert [m.content for m in blind.messages] == ["before", "hi"]  # nothing lost


def test_damaged_pictures_fail_in_one_line_and_print_nothing(
    capfd: pytest.CaptureFixture[str],
) -> None:
    import random

    from localrun.images import decode_rgb

    rng = random.Random(1)
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    refused = 0
    for kind in ("PNG", "JPEG", "GIF", "BMP", "WEBP"):
        out = io.BytesIO()
        PIL.Image.fromarray(pixels).save(out, kind)
        for _ in range(100):
            data = bytearray(out.getvalue())
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            try:
                decode_rgb(Image(bytes(data), "damaged"))
            except UsageError as e:
                assert "cannot read the image damaged" in e.message or "megapixels" in e.message
                refused += 1
    assert refused > 50
    eps = Image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "x.eps")
    with pytest.raises(UsageError, match="not a picture localrun reads"):
        decode_rgb(eps)  # never handed to Ghostscript
    assert capfd.readouterr() == ("", "")


def test_too_many_pictures_or_too_much_text_are_refused_before_decoding(
    server: Server, pictures: list[Path]
) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        many = http.post(
            "/api/generate",
            json={"model": "seer", "prompt": "x", "images": [b64(pictures[0])] * 33},
        )
        assert many.status_code == 400 and "at most 32 go in one" in many.text
        long = http.post(
            "/api/generate",
            json={"model": "seer", "raw": True, "prompt": "ab " * 200_000,
                  "images": [b64(pictures[0])]},
        )  # fmt: skip
        assert long.status_code == 400 and "tokens but the context holds only" in long.text


def test_other_answers_go_on_between_one_requests_pictures(
    loaded: engine.LoadedModel, pictures: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = loaded.model
    batch = runner_of(loaded).engine
    plain = conversation_prompt(model, loaded.template, [Message("user", "the sky")])
    other = batch.submit(Job(plain.tokens, GREEDY, max_tokens=40, stop_at_eog=False))
    real = model.eval_image  # type: ignore[attr-defined]
    seen: list[int] = []

    def eval_image(chunk: Any, seq: int, pos: int) -> Any:
        seen.append(len(other.tokens))  # the other answer's length at each picture
        return real(chunk, seq, pos)

    monkeypatch.setattr(model, "eval_image", eval_image)
    images = tuple(read_image(p) for p in pictures)
    prompt = conversation_prompt(model, loaded.template, [Message("user", "x", images=images)])
    _, stats = collect(batch.submit(Job(prompt.tokens, GREEDY, max_tokens=2, images=prompt.images)))
    collect(other)
    assert stats.images == 3 and len(seen) == 3
    assert seen[0] < seen[1] < seen[2]  # a step of the other answer between pictures


def test_a_picture_is_counted_by_the_cells_it_fills(
    loaded: engine.LoadedModel, pictures: list[Path]
) -> None:
    from dataclasses import replace

    model = loaded.model
    prompt = conversation_prompt(
        model, loaded.template, [Message("user", "x", images=(read_image(pictures[0]),))]
    )
    assert prompt.cells == len(prompt.tokens)  # a LLaVA projector: a cell a position
    # An M-RoPE picture (Qwen2.5-VL's) takes fewer positions than the cells it fills.
    ((token, chunk),) = prompt.images.items()
    wide = {token: replace(chunk, n_tokens=chunk.n_pos + loaded.seq_ctx)}
    with pytest.raises(
        PromptTooLongError, match=f"is {len(prompt.tokens) + loaded.seq_ctx} tokens"
    ):
        runner_of(loaded).engine.submit(Job(prompt.tokens, GREEDY, images=wide))


def test_an_mrope_model_places_its_pictures_by_fewer_positions_than_cells(
    tmp_path: Path, pictures: list[Path]
) -> None:
    """Qwen2-VL's kind: a picture takes fewer positions than the cells it fills, and the
    engine's positions follow libmtmd's (the same answer again from the kept cells)."""
    from tests.tinygguf import write_tiny_qwen2vl_model, write_tiny_qwen2vl_projector

    found = engine.load_model(
        "qwen-ish", n_ctx=512, n_threads=2, n_seq=2,
        path=write_tiny_qwen2vl_model(tmp_path / "qwen2vl.gguf"),
        settings=Settings(projector=write_tiny_qwen2vl_projector(tmp_path / "mmproj-q.gguf")),
    )  # fmt: skip
    found.prompt_cache = False
    try:
        image = (read_image(pictures[0]),)
        prompt = conversation_prompt(
            found.model, found.template, [Message("user", "x", images=image)]
        )
        (chunk,) = prompt.images.values()
        assert chunk.n_pos < chunk.n_tokens
        assert prompt.cells == len(prompt.tokens) + chunk.n_tokens - chunk.n_pos
        first, stats = ask(found, "what is it", pictures[0])
        assert stats.images == 1 and stats.image_tokens == chunk.n_tokens and first
        again, repeated = ask(found, "what is it", pictures[0])
        assert again == first and repeated.prompt_evaluated == 1
        assert ask(found, "what is it", pictures[1])[0] != first
    finally:
        found.close()
