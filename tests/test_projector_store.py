"""Vision models in the store: projectors (mmproj) pulled, recorded, shown, removed and resolved,
and named in Modelfiles; against the test Hub, with real GGUF files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from localrun.errors import (
    BrokenModelError,
    CorruptDownloadError,
    InsufficientSpaceError,
    InvalidModelError,
    ModelfileError,
    ModelNotFoundError,
    NeedsPullError,
    NotGGUFError,
    UsageError,
)
from localrun.files import human_size
from localrun.hub import pull, store
from localrun.hub.refs import HubRef, choose, choose_projector, gguf_choices, is_projector
from localrun.models import recipes
from localrun.models.modelfile import parse
from localrun.models.resolve import resolve
from tests.hub import FakeHub, Faults
from tests.proc import wait_for
from tests.pulling import Recorder, gets, localrun_cmd
from tests.tinygguf import write_tiny_model

MiB = 1 << 20
REPO = "org/vis-GGUF"
REF = f"hf.co/{REPO}"
F16 = "mmproj-model-f16.gguf"
Q8 = "mmproj-vis-Q8_0.gguf"


def write_projector(
    path: Path, *, size: int = 4096, vision: bool | None = True, audio: bool = False
) -> Path:
    """A minimal projector GGUF (architecture clip) of about ``size`` bytes.

    llama.cpp cannot load it (tests/tinygguf.py's write_tiny_projector makes one it can):
    the store and the Modelfile read its header only.
    """
    w = gguf.GGUFWriter(str(path), "clip")
    if vision is not None:
        w.add_clip_has_vision_encoder(vision)
    if audio:
        w.add_clip_has_audio_encoder(True)
    w.add_tensor("mm.0.weight", np.zeros(max(size // 4, 1), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def projectors(tmp_path: Path) -> dict[str, bytes]:
    """Two projectors, as ggml-org's repositories publish them: f16 and q8_0."""
    return {
        F16: write_projector(tmp_path / F16, size=8192).read_bytes(),
        Q8: write_projector(tmp_path / Q8, size=4096).read_bytes(),
    }


@pytest.fixture(scope="session")
def other_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Another tiny model (its header is read by ``show --quants``), for the Q8_0 file."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "q8.gguf", seed=1).read_bytes()


@pytest.fixture
def vis(
    hub: FakeHub, tiny_bytes: bytes, other_bytes: bytes, projectors: dict[str, bytes]
) -> FakeHub:
    """A vision model's repository: two quants of the weights and two projectors."""
    hub.add_repo(REPO, {"vis-Q4_K_M.gguf": tiny_bytes, "vis-Q8_0.gguf": other_bytes, **projectors})
    return hub


# -- choosing files ------------------------------------------------------------------


def test_projectors_are_never_weights() -> None:
    files = [
        "m-Q4_K_M.gguf",
        "mmproj-F16.gguf",
        "sub/mmproj-model-f16.gguf",
        "llava-v1.6-mistral-7b-mmproj-Q8_0.gguf",
        "MMPROJ-BF16.gguf",
    ]
    assert [c.files for c in gguf_choices(files)] == [("m-Q4_K_M.gguf",)]
    assert all(is_projector(f) for f in files[1:]) and not is_projector(files[0])
    # A repository of projectors alone offers no model, whatever quant is asked for.
    with pytest.raises(NotGGUFError, match="no GGUF model files"):
        choose(HubRef("o/r"), files[1:])
    with pytest.raises(UsageError, match="vision projector, not a model") as e:
        choose(HubRef("o/r", filename="mmproj-F16.gguf"), files)
    assert e.value.hint and "hf.co/o/r" in e.value.hint


@pytest.mark.parametrize(
    ("files", "chosen"),
    [
        (["mmproj-Q8_0.gguf", "mmproj-model-f16.gguf", "mmproj-F32.gguf"], "mmproj-model-f16.gguf"),
        (["mmproj-F32.gguf", "mmproj-Q8_0.gguf", "mmproj-BF16.gguf"], "mmproj-BF16.gguf"),
        (["mmproj-F32.gguf", "mmproj-q8_0.gguf", "mmproj-Q4_K_M.gguf"], "mmproj-q8_0.gguf"),
        (["mmproj-Q4_K_M.gguf", "mmproj-f32.gguf"], "mmproj-f32.gguf"),
        (["mmproj-b.gguf", "mmproj-a.gguf"], "mmproj-a.gguf"),
        (["mmproj-vis-FP16.gguf", "mmproj-vis-Q8_0.gguf"], "mmproj-vis-FP16.gguf"),
        ([], None),
    ],
)
def test_the_projector_pulled_prefers_f16(files: list[str], chosen: str | None) -> None:
    weights = gguf_choices(["m-Q4_K_M.gguf"])[0]
    assert choose_projector(["README.md", "m-Q4_K_M.gguf", *files], weights) == chosen


def test_the_projector_beside_the_weights_comes_first() -> None:
    files = ["a/m-Q4_K_M.gguf", "a/mmproj-Q8_0.gguf", "b/m-Q4_K_M.gguf", "b/mmproj-F16.gguf"]
    assert choose_projector(files, gguf_choices(files)[0]) == "a/mmproj-Q8_0.gguf"
    assert choose_projector(files, gguf_choices(files)[1]) == "b/mmproj-F16.gguf"
    elsewhere = ["m-Q4_K_M.gguf", "proj/mmproj-F16.gguf"]
    assert choose_projector(elsewhere, gguf_choices(elsewhere)[0]) == "proj/mmproj-F16.gguf"


def test_quant_lists_and_auto_leave_projectors_out(vis: FakeHub, cli: Any) -> None:
    _, _, offered = pull.offers(REF)
    offered_files = sorted(f for o in offered for f in o.choice.files)
    assert offered_files == ["vis-Q4_K_M.gguf", "vis-Q8_0.gguf"]
    quants = cli(["show", REF, "--quants", "--json"])
    assert quants.exit_code == 0, quants.stderr
    assert "mmproj" not in quants.stdout
    auto = cli(["pull", f"{REF}:auto", "--dry-run"])
    assert auto.exit_code == 0, auto.stderr
    assert "would pull" in auto.stderr and "mmproj" not in auto.stderr


# -- pulling -------------------------------------------------------------------------


def test_pull_gets_the_weights_and_the_preferred_projector(
    vis: FakeHub, tiny_bytes: bytes, projectors: dict[str, bytes]
) -> None:
    rec = Recorder()
    result = pull.pull(REF, reporter=rec)
    m = result.manifest
    assert [f.path for f in m.files] == ["vis-Q4_K_M.gguf"] and m.quant == "Q4_K_M"
    assert m.projector is not None and m.projector.path == F16
    assert m.projector.sha256 == hashlib.sha256(projectors[F16]).hexdigest()  # the Hub's
    assert m.projector_path == m.file_path(m.projector)
    assert m.projector_path.is_symlink() and m.projector_path.read_bytes() == projectors[F16]
    assert m.blob_path(m.projector).exists()
    assert m.size == len(tiny_bytes) + len(projectors[F16])
    assert [s[0] for s in rec.starts] == ["vis-Q4_K_M.gguf", F16]
    assert result.downloaded_bytes == m.size
    assert gets(vis, Q8) == [] and gets(vis, "vis-Q8_0.gguf") == []
    saved = json.loads((store.manifest_dir() / "hf.co%2Forg%2Fvis-GGUF.json").read_text())
    assert saved["projector"]["path"] == F16
    assert store.load(REF) == m  # read back as written
    assert pull.pull(REF).up_to_date and len(gets(vis, F16)) == 1


def test_a_projector_shared_by_two_quants_is_fetched_once(vis: FakeHub, other_bytes: bytes) -> None:
    q4 = pull.pull(REF).manifest
    q8 = pull.pull(f"{REF}:Q8_0")
    assert q8.manifest.projector == q4.projector and q8.downloaded_bytes == len(other_bytes)
    assert len(gets(vis, F16)) == 1


def test_manifests_without_a_projector_still_load(vis: FakeHub) -> None:
    m = pull.pull(REF).manifest
    old = json.loads(m.to_json())
    del old["projector"]  # as localrun wrote manifests before projectors
    (store.manifest_dir() / "old.json").write_text(json.dumps({**old, "name": "old"}))
    loaded = store.load("old")
    assert loaded is not None and loaded.projector is None and loaded.stored_files == m.files
    assert resolve("old").settings.projector is None
    assert [x.name for x in store.all_manifests()] == ["hf.co/org/vis-GGUF", "old"]


def test_the_space_and_memory_checks_count_the_projector(
    vis: FakeHub, tiny_bytes: bytes, projectors: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    both = len(tiny_bytes) + len(projectors[F16])

    class Usage:
        free = both + pull.DISK_MARGIN - 1  # room for the weights, not for the projector too

    with monkeypatch.context() as m:
        m.setattr(shutil, "disk_usage", lambda p: Usage)
        with pytest.raises(InsufficientSpaceError, match="not enough disk space"):
            pull.pull(REF)
    assert gets(vis, F16) == [] and gets(vis, "vis-Q4_K_M.gguf") == []
    monkeypatch.setattr(pull, "physical_memory", lambda: both - 1)
    with pytest.raises(InsufficientSpaceError, match="memory"):
        pull.pull(REF)
    assert pull.pull(REF, force=True).manifest.size == both


def test_a_dropped_projector_download_resumes_at_its_byte(
    hub: FakeHub, tiny_bytes: bytes, tmp_path: Path
) -> None:
    big = write_projector(tmp_path / "big.gguf", size=3 * MiB)
    hub.add_repo(REPO, {"vis-Q4_K_M.gguf": tiny_bytes, "mmproj-F16.gguf": big.read_bytes()})
    hub.faults = Faults(cut_after=2 * MiB)  # past the end of the weights: the projector's GET
    m = pull.pull(REF).manifest
    assert m.projector_path is not None and m.projector_path.read_bytes() == big.read_bytes()
    ranges = [r.headers.get("Range") for r in gets(hub, "mmproj-F16.gguf")]
    assert ranges == [None, f"bytes={2 * MiB}-"]
    assert [r.headers.get("Range") for r in gets(hub, "vis-Q4_K_M.gguf")] == [None]


def test_a_killed_pull_resumes_the_projector_where_it_stopped(
    hub: FakeHub, tiny_bytes: bytes, localrun_home: Path, tmp_path: Path
) -> None:
    data = write_projector(tmp_path / "mmproj-F16.gguf", size=3 * MiB).read_bytes()
    hub.add_repo(REPO, {"vis-Q4_K_M.gguf": tiny_bytes, "mmproj-F16.gguf": data})
    hub.faults = Faults(stall_after=2 * MiB)  # the weights pass whole; the projector stops
    proc = localrun_cmd(localrun_home, hub, "pull", REF)
    part = store.partial_dir() / f"{hashlib.sha256(data).hexdigest()}.part"
    try:
        assert hub.stalled.wait(30)
        wait_for(lambda: part.exists() and part.stat().st_size >= 2 * MiB)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    assert proc.returncode == 130 and store.all_manifests() == []  # recorded only when whole
    hub.faults = Faults()
    result = pull.pull(REF)
    assert result.resumed_bytes == 2 * MiB
    assert result.downloaded_bytes == len(data) - 2 * MiB  # the weights were already in place
    assert gets(hub, "mmproj-F16.gguf")[-1].headers["Range"] == f"bytes={2 * MiB}-"
    assert result.manifest.projector_path is not None
    assert result.manifest.projector_path.read_bytes() == data


def test_a_corrupt_projector_download_is_refused(vis: FakeHub) -> None:
    m = pull.pull(REF).manifest
    assert m.projector is not None and m.projector_path is not None
    m.blob_path(m.projector).unlink()  # the weights stay: only the projector comes again
    vis.faults = Faults(wrong_bytes=True)
    with pytest.raises(CorruptDownloadError, match=F16):
        pull.pull(REF)
    assert store.require(REF).missing_files == [F16]
    assert list(store.partial_dir().glob("*.part")) == []


# -- the store: show, rm, verify, repair ----------------------------------------------


def test_show_names_the_projector_and_the_capabilities(vis: FakeHub, cli: Any) -> None:
    assert cli(["pull", REF]).exit_code == 0
    text = cli(["show", REF]).stdout
    m = store.require(REF)
    assert m.projector is not None
    assert "capabilities       completion, vision\n" in text
    size = human_size(m.projector.size)
    assert f"projector          mmproj-model-f16.gguf ({size}, vision)\n" in text
    facts = json.loads(cli(["show", REF, "--json"]).stdout)
    assert facts["capabilities"] == ["completion", "vision"]
    assert facts["projector"] == {
        "path": str(m.projector_path), "size": m.projector.size, "modalities": ["vision"],
    }  # fmt: skip
    assert facts["size"] == m.files[0].size  # the weights' file, as "path" names it
    listed = json.loads(cli(["list", "--json"]).stdout)
    assert listed[0]["size"] == m.size  # the store: weights and projector


@pytest.mark.parametrize(
    ("vision", "audio", "modalities"),
    [(True, True, ["vision", "audio"]), (False, True, ["audio"]), (None, False, ["vision"])],
)
def test_what_a_projector_encodes_is_read_from_its_keys(
    cli: Any,
    tmp_path: Path,
    tiny_model: Path,
    vision: bool | None,
    audio: bool,
    modalities: list[str],
) -> None:
    write_projector(tmp_path / "p.gguf", vision=vision, audio=audio)
    (tmp_path / "Modelfile").write_text(f"FROM {tiny_model}\nPROJECTOR ./p.gguf\n")
    assert cli(["create", "media", "-f", str(tmp_path / "Modelfile")]).exit_code == 0
    facts = json.loads(cli(["show", "media", "--json"]).stdout)
    assert facts["projector"]["modalities"] == modalities
    assert facts["capabilities"] == ["completion", *modalities]


def test_a_model_without_a_projector_shows_none(cli: Any, tiny_model: Path) -> None:
    facts = json.loads(cli(["show", str(tiny_model), "--json"]).stdout)
    assert facts["projector"] is None and facts["capabilities"] == ["completion"]
    assert "projector" not in cli(["show", str(tiny_model)]).stdout


def test_rm_removes_the_projector_when_no_other_model_uses_it(vis: FakeHub, cli: Any) -> None:
    q4 = pull.pull(REF).manifest
    pull.pull(f"{REF}:Q8_0")
    assert q4.projector is not None and q4.projector_path is not None
    projector_blob = q4.blob_path(q4.projector)
    assert store.remove(REF) == q4.files[0].size  # the Q8_0 model still uses the projector
    assert projector_blob.exists() and q4.projector_path.exists()
    assert store.prune() == store.PruneResult(0, 0, 0)  # a used projector is no stray blob
    removed = cli(["rm", f"{REF}:Q8_0"])
    assert removed.exit_code == 0 and "removed hf.co/org/vis-GGUF:Q8_0" in removed.stderr
    assert not projector_blob.exists() and not q4.projector_path.is_symlink()
    assert list(store.repo_dir(REPO).glob("blobs/*")) == []


def test_verify_checks_the_projector_and_pull_repairs_it(vis: FakeHub) -> None:
    m = pull.pull(REF).manifest
    assert m.projector is not None
    assert store.verify() == store.VerifyResult(2, [], [])
    blob = m.blob_path(m.projector)
    blob.write_bytes(b"GGUF" + b"\0" * (m.projector.size - 4))
    assert store.verify().corrupt == [(REF, F16)] and not blob.exists()
    assert store.verify().missing == [(REF, F16)]
    loaded = store.require(REF)
    assert loaded.missing_files == [F16]
    with pytest.raises(NeedsPullError):  # a Hub reference: the caller pulls it
        resolve(REF)
    store.copy(loaded, "alias")
    with pytest.raises(BrokenModelError, match=f"missing {F16}") as e:
        resolve("alias")
    assert e.value.hint == f"pull it again: localrun pull {REF}/vis-Q4_K_M.gguf"
    repaired = pull.pull(REF)
    assert repaired.downloaded_bytes == m.projector.size  # the projector alone
    assert repaired.manifest.missing_files == [] and resolve("alias").settings.projector


# -- resolve -------------------------------------------------------------------------


def test_resolve_gives_the_projector(vis: FakeHub, tiny_model: Path, tmp_path: Path) -> None:
    m = pull.pull(REF).manifest
    assert resolve(REF).settings.projector == m.projector_path
    store.copy(m, "mine")
    assert resolve("mine").settings.projector == m.projector_path
    assert resolve(str(tiny_model)).settings.projector is None
    # A created model inherits its base's projector, and its own replaces it.
    (tmp_path / "Inherits").write_text(f"FROM {REF}\nSYSTEM be brief\n")
    recipes.create("inherits", tmp_path / "Inherits")
    assert resolve("inherits").settings.projector == m.projector_path
    own = write_projector(tmp_path / "mmproj-own-F16.gguf")
    (tmp_path / "Own").write_text("FROM inherits\nPROJECTOR ./mmproj-own-F16.gguf\n")
    recipes.create("own", tmp_path / "Own")
    assert resolve("own").settings.projector == own
    (tmp_path / "Below").write_text("FROM own\n")
    recipes.create("below", tmp_path / "Below")
    assert resolve("below").settings.projector == own


# -- Modelfiles ----------------------------------------------------------------------


def test_a_second_from_or_projector_names_the_projector() -> None:
    mf = parse("FROM ./model.gguf\nSYSTEM hi\nFROM ./mmproj-F16.gguf\n")
    assert (mf.from_, mf.projector, mf.projector_instruction) == (
        "./model.gguf", "./mmproj-F16.gguf", "FROM",
    )  # fmt: skip
    by_name = parse("projector ./mmproj-F16.gguf\nFROM ./model.gguf\nSYSTEM hi\n")
    assert by_name == mf  # one model, either way
    assert by_name.projector_instruction == "PROJECTOR"
    assert "PROJECTOR ./mmproj-F16.gguf\n" in mf.to_text()
    assert parse(mf.to_text()) == mf
    assert parse("FROM x\n").projector is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM m\nFROM p1\nFROM p2\n", "line 3: a second projector (line 2 names one already)"),
        ("FROM m\nPROJECTOR p1\nFROM p2\n", "line 3: a second projector (line 2"),
        ("FROM m\nFROM p1\nPROJECTOR p2\n", "line 3: a second projector (line 2"),
        ("FROM m\nPROJECTOR\n", "line 2: PROJECTOR needs a file"),
    ],
)
def test_projector_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ModelfileError) as e:
        parse(text, "Modelfile")
    assert message in e.value.message and e.value.hint


def test_create_stores_the_projector_and_show_writes_it_back(
    cli: Any, tmp_path: Path, tiny_model: Path
) -> None:
    (tmp_path / "model.gguf").write_bytes(tiny_model.read_bytes())
    projector = write_projector(tmp_path / "mmproj-F16.gguf")
    (tmp_path / "Modelfile").write_text("FROM ./model.gguf\nFROM ./mmproj-F16.gguf\n")
    created = cli(["create", "seer", "-f", str(tmp_path / "Modelfile")])
    assert created.exit_code == 0, created.stderr
    recipe = recipes.find("seer")
    assert recipe is not None and recipe.modelfile.projector == str(projector)
    shown = cli(["show", "seer", "--modelfile"]).stdout
    assert shown == f"FROM {tmp_path / 'model.gguf'}\nPROJECTOR {projector}\n"
    (tmp_path / "again").write_text(shown)
    assert cli(["create", "seer2", "-f", str(tmp_path / "again")]).exit_code == 0
    assert cli(["show", "seer2", "--modelfile"]).stdout == shown
    assert resolve("seer").settings.projector == projector
    assert "projector          mmproj-F16.gguf (" in cli(["show", "seer"]).stdout
    # rm forgets the model and leaves the user's files, as it does for FROM and ADAPTER.
    assert cli(["rm", "seer"]).stderr == "removed seer (its base model is kept)\n"
    assert projector.exists() and (tmp_path / "model.gguf").exists()
    # A created model whose projector has gone says so.
    projector.unlink()
    with pytest.raises(ModelNotFoundError, match="the projector of 'seer2' is gone"):
        resolve("seer2")


def test_create_refuses_what_is_not_a_projector(cli: Any, tmp_path: Path, tiny_model: Path) -> None:
    def create(text: str) -> str:
        (tmp_path / "Modelfile").write_text(text)
        result = cli(["create", "x", "-f", str(tmp_path / "Modelfile")])
        assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
        stderr: str = result.stderr
        assert "Hint: " in stderr
        return stderr

    missing = create(f"FROM {tiny_model}\nPROJECTOR ./mmproj-F16.gguf\n")
    assert f"PROJECTOR ./mmproj-F16.gguf: no projector file at {tmp_path}/mmproj-F16.gguf" in (
        missing
    )
    second_model = create(f"FROM {tiny_model}\nFROM {tiny_model}\n")
    assert f"FROM {tiny_model}: not a projector (its GGUF architecture is 'llama'" in second_model
    (tmp_path / "notes.gguf").write_text("not a GGUF")
    assert "PROJECTOR ./notes.gguf: " in create(f"FROM {tiny_model}\nPROJECTOR ./notes.gguf\n")
    hub_ref = create(f"FROM {tiny_model}\nFROM hf.co/org/vis-GGUF/{F16}\n")
    assert "a projector must be a file here, not a Hub reference" in hub_ref
    two = create(f"FROM {tiny_model}\nFROM ./a.gguf\nPROJECTOR ./b.gguf\n")
    assert "line 3: a second projector" in two
    assert recipes.created() == []


def test_record_errors_are_localrun_errors(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "bad.gguf").write_bytes(b"nope")
    mf = parse(f"FROM {tiny_model}\nPROJECTOR ./bad.gguf\n")
    with pytest.raises(InvalidModelError) as e:
        recipes.record("x", mf, tmp_path)
    assert e.value.message.startswith("PROJECTOR ./bad.gguf: ") and e.value.hint
