"""Ollama's uploads: ``HEAD``/``POST /api/blobs/sha256:HEX`` and ``/api/create`` with
``files`` and ``adapters``, through the real ``ollama`` Python client: in-process (httpx's
ASGI transport) for the answers, the store and the cleanup; against a real ``localrun serve``
for the answers of a model made from uploads and for a connection dropped mid-upload."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from localrun.hub import store
from localrun.models import catalog, recipes
from localrun.models.resolve import resolve
from localrun.server.app import create_app
from localrun.server.config import ServeConfig
from tests.served import serving, wait_for
from tests.tinygguf import write_tiny_lora, write_tiny_projector

KEY = "s3cret-key"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def leftovers() -> list[str]:
    """Whatever is in the uploads' folder: blobs, and any half-written file."""
    folder = store.upload_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def run(
    work: Callable[[ollama.AsyncClient, httpx.AsyncClient], Awaitable[Any]],
    config: ServeConfig | None = None,
) -> Any:
    """``work`` with the ollama client and a plain httpx client, over the app in-process."""

    async def go() -> Any:
        app = create_app(config or ServeConfig())
        base = "http://127.0.0.1"
        client = ollama.AsyncClient(base, transport=httpx.ASGITransport(app=app))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base) as h:
            return await work(client, h)

    return asyncio.run(go())


def test_head_and_post_answer_as_ollamas(tiny_model: Path, tiny_bytes: bytes) -> None:
    digest = digest_of(tiny_bytes)

    async def work(client: ollama.AsyncClient, h: httpx.AsyncClient) -> list[int]:
        before = (await h.head(f"/api/blobs/{digest}")).status_code
        assert await client.create_blob(tiny_model) == digest  # streamed, without a length
        after = (await h.head(f"/api/blobs/{digest}")).status_code
        again = await h.post(f"/api/blobs/{digest}", content=b"unread: it is here already")
        return [before, after, again.status_code]

    # The server's --max-body (1 KB here) bounds requests, not uploads (500 KB).
    assert run(work, ServeConfig(max_body=1024)) == [404, 200, 200]
    blob = store.upload_path(digest)
    assert blob.read_bytes() == tiny_bytes
    assert leftovers() == [blob.name]


def test_a_first_post_is_a_201(tiny_bytes: bytes) -> None:
    digest = digest_of(tiny_bytes)

    async def work(client: ollama.AsyncClient, h: httpx.AsyncClient) -> list[int]:
        first = await h.post(f"/api/blobs/{digest}", content=tiny_bytes)
        second = await h.post(f"/api/blobs/{digest}", content=tiny_bytes)
        return [first.status_code, second.status_code]

    assert run(work) == [201, 200]


def test_a_body_that_is_not_its_digest_is_a_400_and_leaves_nothing(tiny_bytes: bytes) -> None:
    claimed = digest_of(b"other bytes")

    async def work(client: ollama.AsyncClient, h: httpx.AsyncClient) -> list[httpx.Response]:
        wrong = await h.post(f"/api/blobs/{claimed}", content=tiny_bytes)
        bad = [await h.post(f"/api/blobs/{d}", content=b"x") for d in
               ("sha256:abc", "md5:" + "0" * 64, "sha256:" + "g" * 64)]  # fmt: skip
        return [wrong, *bad, await h.head("/api/blobs/sha256:abc")]

    wrong, *bad, head = run(work)
    assert wrong.status_code == 400, wrong.text
    got = digest_of(tiny_bytes)
    assert wrong.json()["error"].startswith(f"digest mismatch, expected {claimed}, got {got}")
    assert [r.status_code for r in bad] == [400, 400, 400]
    assert all("invalid digest format" in r.json()["error"] for r in bad)
    assert head.status_code == 400
    assert leftovers() == []


def test_an_upload_the_disk_cannot_hold_is_a_413_and_leaves_nothing(
    tiny_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "upload_room", lambda: 1000)
    digest = digest_of(tiny_bytes)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(tiny_bytes), 300):
            yield tiny_bytes[i : i + 300]

    async def work(client: ollama.AsyncClient, h: httpx.AsyncClient) -> list[httpx.Response]:
        told = await h.post(f"/api/blobs/{digest}", content=tiny_bytes)  # Content-Length
        untold = await h.post(f"/api/blobs/{digest}", content=chunks())  # chunked
        return [told, untold]

    for r in run(work):
        assert r.status_code == 413, r.text
        assert "room for 1000" in r.json()["error"]
    assert leftovers() == []


def test_a_disk_that_fills_up_is_a_507_and_leaves_nothing(
    tiny_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(upload: store.BlobUpload, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(upload.part))

    monkeypatch.setattr(store.BlobUpload, "write", full)

    async def work(client: ollama.AsyncClient, h: httpx.AsyncClient) -> httpx.Response:
        return await h.post(f"/api/blobs/{digest_of(tiny_bytes)}", content=tiny_bytes)

    r = run(work)
    assert r.status_code == 507 and "no space left on the device" in r.json()["error"], r.text
    assert leftovers() == []


def test_a_client_gone_mid_upload_leaves_nothing(tiny_bytes: bytes) -> None:
    """As uvicorn tells the app: part of the body, then ``http.disconnect``."""
    digest = digest_of(tiny_bytes)
    app = create_app(ServeConfig())
    half: list[dict[str, Any]] = [
        {"type": "http.request", "body": tiny_bytes[:1000], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return half.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": f"/api/blobs/{digest}", "raw_path": b"",
        "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
        "server": ("127.0.0.1", 11434), "client": ("127.0.0.1", 5000),
        "headers": [(b"host", b"127.0.0.1:11434"),
                    (b"content-length", str(len(tiny_bytes)).encode())],
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 400  # read by nobody; not a 500
    assert leftovers() == []


def test_create_from_uploaded_files(tiny_model: Path, tmp_path: Path) -> None:
    projector = write_tiny_projector(tmp_path / "mmproj.gguf")
    lora = write_tiny_lora(tmp_path / "lora.gguf")

    async def work(client: ollama.AsyncClient, h: httpx.AsyncClient) -> Any:
        model = await client.create_blob(tiny_model)
        files = {"tiny.gguf": model, "mmproj.gguf": await client.create_blob(projector)}
        adapters = {"lora.gguf": await client.create_blob(lora)}
        drafted = {"tiny.gguf": model}, {"draft.gguf": model}  # Ollama's DRAFT, uploaded
        body = {"model": "tiny-drafted", "files": drafted[0], "draft_files": drafted[1]}
        assert (await h.post("/api/create", json=body)).status_code == 200
        made = await client.create(
            model="tiny2", files=files, adapters=adapters, system="Be brief.",
            template="{{ .Prompt }}", license="MIT", parameters={"num_predict": 3, "stop": ["x"]},
            messages=[{"role": "user", "content": "hi"}],
        )  # fmt: skip
        return made.status, files, adapters

    status, files, adapters = run(work)
    assert status == "success"
    recipe = recipes.find("tiny2")
    assert recipe is not None
    mf = recipe.modelfile
    assert (mf.system, mf.template, mf.license) == ("Be brief.", "{{ .Prompt }}", ["MIT"])
    assert (mf.parameters, mf.stop, mf.messages) == ({"num_predict": 3}, ["x"], [("user", "hi")])
    made = resolve("tiny2")
    assert made.path.name == "tiny.gguf"  # its link under its own name: no bytes copied
    assert made.path.samefile(store.upload_path(files["tiny.gguf"]))
    assert made.settings.projector is not None
    assert made.settings.projector.samefile(store.upload_path(files["mmproj.gguf"]))
    assert [a.name for a in made.settings.adapters] == ["lora.gguf"]
    assert made.settings.adapters[0].samefile(store.upload_path(adapters["lora.gguf"]))
    assert catalog.require("tiny2").problem is None
    drafted = recipes.find("tiny-drafted")
    assert drafted is not None
    draft = Path(str(drafted.modelfile.parameters["draft"]))
    assert draft.name == "draft.gguf" and draft.samefile(made.path)


def test_create_refuses_what_it_cannot_make_and_records_nothing(
    tiny_model: Path, tiny_bytes: bytes, tmp_path: Path
) -> None:
    missing = digest_of(b"never uploaded")
    text = tmp_path / "notes.txt"
    text.write_bytes(b"not a model")
    lora = write_tiny_lora(tmp_path / "lora.gguf")

    async def work(client: ollama.AsyncClient, h: httpx.AsyncClient) -> list[tuple[int, str]]:
        model, notes = await client.create_blob(tiny_model), await client.create_blob(text)
        adapter = await client.create_blob(lora)
        bodies: list[dict[str, Any]] = [
            {"files": {"tiny.gguf": missing}},
            {"files": {"tiny.gguf": "sha256:abc"}},
            {"files": {"../tiny.gguf": model}},
            {"files": {"tiny.gguf": model}, "from": "tiny"},
            {"files": {"notes.gguf": notes}},
            {"files": {"model.safetensors": model}},
            {"files": {"a.gguf": model, "b.gguf": model}},
            {"files": {"a.gguf": model}, "adapters": {"b.gguf": model}},
            {"files": {"a.gguf": adapter}},
            {"files": ["tiny.gguf"]},
            {"files": {"tiny.gguf": model}, "renderer": "qwen3"},
            {"files": {"tiny\u0000.gguf": model}},
            {"files": {"tiny.gguf": model}, "parameters": {"draft": "/etc/passwd"}},
        ]
        answers = []
        for body in bodies:
            r = await h.post("/api/create", json={"model": "bad", **body})
            answers.append((r.status_code, r.json()["error"]))
        return answers

    answers = run(work)
    assert all(status == 400 for status, _ in answers), answers
    said = [error for _, error in answers]
    assert said[0].startswith(f"blob {missing} not found")
    assert "invalid digest format" in said[1] and "must be relative" in said[2]
    assert "names its model twice" in said[3] and "is not a GGUF file" in said[4]
    assert "safetensors" in said[5] and "two models" in said[6]
    assert "not a LoRA adapter" in said[7]
    assert "is a LoRA adapter" in said[8]
    assert "'files' must be an object" in said[9] and "'renderer' is not supported" in said[10]
    assert "not a file name" in said[11] and "draft must name a model, not a file" in said[12]
    assert recipes.find("bad") is None
    assert not list(store.named_dir().rglob("*"))
    assert len(leftovers()) == 3  # the uploads stay, for prune


def test_rm_and_prune_delete_uploads_no_model_uses(tiny_model: Path, tiny_bytes: bytes) -> None:
    digest = digest_of(tiny_bytes)

    async def work(client: ollama.AsyncClient, h: httpx.AsyncClient) -> None:
        await client.create_blob(tiny_model)
        await client.create(model="tiny2", files={"tiny.gguf": digest})
        await client.copy("tiny2", "tiny3")  # the copy names the same upload

    run(work)
    blob = store.upload_path(digest)
    assert catalog.remove("tiny2") == ("tiny2", None) and blob.exists()
    assert resolve("tiny3").path.samefile(blob)
    assert store.prune().unreferenced_blobs == 0 and blob.exists()
    assert catalog.remove("tiny3") == ("tiny3", len(tiny_bytes))
    assert leftovers() == [] and not list(store.named_dir().rglob("*"))

    # One that no create named, and one that a stopped server left half-written: pruned; one
    # still arriving is not.
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(tiny_bytes)
    (blob.parent / f"{blob.name}.abc.part").write_bytes(b"half")
    arriving = store.BlobUpload(digest, 10**6)
    try:
        pruned = store.prune()
        assert (pruned.unreferenced_blobs, pruned.partial_files) == (1, 1)
        assert pruned.freed_bytes == len(tiny_bytes) + 4
        assert [p.name for p in blob.parent.glob("*.part")] == [arriving.part.name]
    finally:
        arriving.close()
    assert leftovers() == []


def test_uploads_are_off_past_loopback_unless_allowed(tiny_bytes: bytes) -> None:
    digest = digest_of(tiny_bytes)
    url = f"/api/blobs/{digest}"

    async def work(client: ollama.AsyncClient, h: httpx.AsyncClient) -> list[int]:
        auth = {"Authorization": f"Bearer {KEY}", "Host": "0.0.0.0"}
        return [
            (await h.head(url, headers=auth)).status_code,
            (await h.post(url, content=tiny_bytes, headers=auth)).status_code,
            (await h.post(url, content=tiny_bytes, headers={"Host": "0.0.0.0"})).status_code,
        ]

    public = ServeConfig(host="0.0.0.0", api_key=KEY)
    assert run(work, public) == [403, 403, 401]
    assert leftovers() == []
    allowed = ServeConfig(host="0.0.0.0", api_key=KEY, allow_admin=True)
    assert run(work, allowed) == [404, 201, 401]


@pytest.mark.slow
def test_ollama_create_from_a_local_gguf_against_serve(
    tmp_path: Path, tiny_model: Path, tiny_bytes: bytes
) -> None:
    """What ``ollama create -f Modelfile`` (FROM ./tiny.gguf) and the Python client do:
    upload the file, create from its digest, answer with it; and a connection dropped
    mid-upload leaves nothing."""
    home = tmp_path / "home"
    lora = write_tiny_lora(tmp_path / "lora.gguf")
    with serving(home) as server:
        client = ollama.Client(server.url)
        digest = client.create_blob(tiny_model)  # with a Content-Length, as the Go client's
        assert httpx.head(f"{server.url}/api/blobs/{digest}").status_code == 200
        absent = f"{server.url}/api/blobs/{digest_of(b'absent')}"
        assert httpx.head(absent).status_code == 404
        done = list(client.create(model="tiny2", files={"tiny.gguf": digest},
                                  adapters={"lora.gguf": client.create_blob(lora)},
                                  parameters={"num_predict": 4}, stream=True))  # fmt: skip
        assert done[-1].status == "success"
        answer = client.generate(model="tiny2", prompt="hello", options={"seed": 1})
        assert answer.done and answer.eval_count == 4
        assert "tiny2" in [m.model for m in client.list().models]

        other = bytes(reversed(tiny_bytes))
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            raw.sendall(
                f"POST /api/blobs/{digest_of(other)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Length: {len(other)}\r\n\r\n".encode()
                + other[:200_000]
            )
            wait_for(lambda: any(p.suffix == ".part" for p in (home / "cache" / "blobs").iterdir()),
                     60, "the upload to start")  # fmt: skip
        wait_for(lambda: not any(p.suffix in (".part", ".lock")
                                 for p in (home / "cache" / "blobs").iterdir()),
                 60, "the dropped upload to be cleaned up")  # fmt: skip
        assert sorted(p.name for p in (home / "cache" / "blobs").iterdir()) == [
            f"sha256-{hashlib.sha256(x).hexdigest()}" for x in sorted(
                (tiny_bytes, lora.read_bytes()), key=lambda b: hashlib.sha256(b).hexdigest())
        ]  # fmt: skip
        assert client.delete("tiny2").status == "success"
    assert not list((home / "cache" / "blobs").iterdir())
    assert "internal error" not in server.stderr, server.stderr
