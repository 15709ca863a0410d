"""An answer's text and figures on the way out (engine/output.py), shared by every engine."""

from __future__ import annotations

from localrun.engine.output import TextOut, timed
from localrun.engine.types import Stats


def test_a_character_split_across_tokens_comes_out_whole() -> None:
    out = TextOut([])
    snowman = "☃".encode()
    assert out.feed(snowman[:1]) == ("", False)
    assert out.feed(snowman[1:] + b"!") == ("☃!", False)
    assert out.feed(b"\xe2\x98") == ("", False)
    assert out.flush() == "\ufffd"  # an answer cut inside a character: replaced, not lost


def test_text_that_may_begin_a_stop_string_is_held_until_it_is_known() -> None:
    out = TextOut(["</end>"])
    assert out.feed(b"one </e") == ("one ", False)
    assert out.feed(b"ndless") == ("</endless", False)  # not the stop after all
    assert out.feed(b" two</end> three") == (" two", True)
    assert TextOut(["</end>"]).feed(b"x</") == ("x", False)


def test_ttft_and_the_rates_have_one_definition() -> None:
    stats = Stats(prompt_evaluated=100, prefill_s=0.5)
    timed(stats, start=10.0, first=10.6, last=11.6, sampled=11, end=11.7)
    assert abs(stats.ttft_s - 0.6) < 1e-9
    assert abs(stats.decode_s - 1.0) < 1e-9
    assert abs(stats.decode_tokens_per_s - 10.0) < 1e-9  # 10 tokens after the first, in 1 s
    assert stats.prefill_tokens_per_s == 200.0 and abs(stats.total_s - 1.7) < 1e-9
    none = Stats()
    timed(none, start=1.0, first=0.0, last=0.0, sampled=0, end=2.0)  # no token came
    assert (none.ttft_s, none.decode_tokens_per_s, none.total_s) == (0.0, 0.0, 1.0)
