"""What localrun's image path costs over llama.cpp's own: a picture and a question, to the
first answer token.

No vision model can be pulled here, so the benchmark makes one of a real size: the demo model
(Gemma 3 270M) with a random LLaVA-style projector of ViT-S/14's shape (12 blocks of 384, at
224x224 pixels: 256 image tokens), written into ``benchmarks/.cache``. Its answers are noise;
its arithmetic is a vision model's.

Each round, in one process, on a new picture (640x480 JPEG of random pixels, so nothing is
kept from the round before):

- localrun: ``engine.generate`` with the picture, one token: from the request (Pillow's
  decoding, the prompt, ``mtmd_tokenize``) through the batching engine (the encoder, the
  image's and the text's decoding) to the first sampled token (its TTFT);
- llama.cpp: the same picture and text straight through libmtmd's helpers, as llama-mtmd-cli
  does (``mtmd_helper_bitmap_init_from_buf``, ``mtmd_tokenize``, ``mtmd_helper_eval_chunks``,
  the most likely token), on a context of its own with the same threads and batch.

The order alternates every round. Prints each round, then the medians, and the median of each
round's llama.cpp time over localrun's (the two ran back to back, on the same picture: 1.0 is
no cost; the target is at least 0.95).

Usage: python benchmarks/vision.py [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import ctypes
import io
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "benchmarks" / ".cache"
TEXT = "Describe the picture in one sentence."
DEMO_EMBD = 640  # Gemma 3 270M's width: the projector's output


def projector() -> Path:
    """The ViT-S/14-shaped random projector for the demo model (made once)."""
    from tests.tinygguf import write_tiny_projector

    path = CACHE / "mmproj-vit-s14-224-demo.gguf"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        write_tiny_projector(
            partial, n_embd_text=DEMO_EMBD, image_size=224, patch_size=14,
            n_embd=384, n_head=6, n_ff=1536, n_layer=13,  # llava's graph runs n_layer - 1
        )  # fmt: skip
        partial.rename(path)
    return path


def picture(seed: int) -> bytes:
    import numpy as np
    import PIL.Image

    pixels = np.random.default_rng(seed).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out = io.BytesIO()
    PIL.Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


class Direct:
    """The demo model and the projector through llama.cpp's and libmtmd's own calls."""

    def __init__(self, model_path: Path, proj: Path, threads: int) -> None:
        from localrun.backend.llamacpp import bindings

        bindings.register()
        import llama_cpp.llama_cpp as lc
        import llama_cpp.mtmd_cpp as mt

        self.lc, self.mt = lc, mt
        self.model = lc.llama_model_load_from_file(
            str(model_path).encode(), lc.llama_model_default_params()
        )
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = 2048
        cparams.n_batch = cparams.n_ubatch = 512
        cparams.n_threads = cparams.n_threads_batch = threads
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        params = mt.mtmd_context_params_default()
        params.use_gpu = False
        params.n_threads = threads
        params.print_timings = False
        self.mctx = mt.mtmd_init_from_file(str(proj).encode(), self.model, params)
        assert self.ctx and self.mctx, "llama.cpp could not load the model or the projector"
        self.n_vocab = int(lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model)))

    def first_token(self, data: bytes) -> tuple[float, int]:
        """Seconds from the picture's bytes to the first token, and that token."""
        import numpy as np

        lc, mt = self.lc, self.mt
        start = time.perf_counter()
        buffer = (ctypes.c_ubyte * len(data)).from_buffer_copy(data)
        bitmap = mt.mtmd_helper_bitmap_init_from_buf(self.mctx, buffer, len(data), False)
        text = (mt.mtmd_default_marker().decode() + TEXT).encode()
        inp = mt.mtmd_input_text(text, len(text), True, False)
        chunks = mt.mtmd_input_chunks_init()
        bitmaps = (ctypes.c_void_p * 1)(bitmap)
        assert mt.mtmd_tokenize(self.mctx, chunks, ctypes.byref(inp), bitmaps, 1) == 0
        n_past = lc.llama_pos(0)
        rc = mt.mtmd_helper_eval_chunks(
            self.mctx, self.ctx, chunks, 0, 0, 512, True, ctypes.byref(n_past)
        )
        assert rc == 0, rc
        logits = lc.llama_get_logits_ith(self.ctx, -1)
        token = int(np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).argmax())
        seconds = time.perf_counter() - start
        mt.mtmd_input_chunks_free(chunks)
        mt.mtmd_bitmap_free(bitmap)
        lc.llama_memory_seq_rm(lc.llama_get_memory(self.ctx), 0, -1, -1)
        return seconds, token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from localrun import engine
    from localrun.backend import SamplingParams
    from localrun.images import Image
    from localrun.models.demo import demo_model_path
    from localrun.models.resolve import Settings

    proj = projector()
    model_path = demo_model_path()
    loaded = engine.load_model(
        "demo", n_ctx=2048, n_threads=args.threads, path=model_path,
        settings=Settings(projector=proj),
    )  # fmt: skip
    loaded.prompt_cache = False
    direct = Direct(model_path, proj, args.threads)

    def ours(data: bytes, seed: int) -> tuple[float, engine.Stats]:
        request = engine.Request.of(
            TEXT, sampling=SamplingParams(temperature=0.0), max_tokens=1,
            images=[Image(data, f"picture-{seed}.jpg")],
        )  # fmt: skip
        stats = None
        for event in engine.generate(loaded, request):
            if isinstance(event, engine.Finished):
                stats = event.stats
        assert stats is not None and stats.images == 1
        return stats.ttft_s, stats

    ours(picture(1001), 1001)  # warm-up: first calls page in code and weights
    direct.first_token(picture(1002))
    local_s, llama_s, encode_s, prefill_s = [], [], [], []
    tokens = 0
    for r in range(args.rounds):
        data = picture(r)
        order = ("localrun", "llama.cpp") if r % 2 == 0 else ("llama.cpp", "localrun")
        for who in order:
            if who == "localrun":
                seconds, stats = ours(data, r)
                local_s.append(seconds)
                encode_s.append(stats.image_encode_s)
                prefill_s.append(stats.prefill_s)
                tokens = stats.image_tokens
            else:
                llama_s.append(direct.first_token(data)[0])
        print(
            f"round {r + 1}: localrun {local_s[-1]:.3f} s (encode {encode_s[-1]:.3f} s, "
            f"prefill {prefill_s[-1]:.3f} s), llama.cpp {llama_s[-1]:.3f} s",
            flush=True,
        )
    loaded.close()
    ours_m, theirs_m = statistics.median(local_s), statistics.median(llama_s)
    print(f"image tokens: {tokens}")
    print(f"median to the first token: localrun {ours_m:.3f} s, llama.cpp {theirs_m:.3f} s")
    print(f"  localrun's encoder {statistics.median(encode_s):.3f} s, "
          f"prefill {statistics.median(prefill_s):.3f} s")  # fmt: skip
    ratio = statistics.median(t / o for t, o in zip(llama_s, local_s, strict=True))
    print(f"llama.cpp / localrun, the median round: {ratio:.3f} (target at least 0.95)")


if __name__ == "__main__":
    main()
