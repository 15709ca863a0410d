"""What one request's answer becomes on its way out, the same for every engine.

Text: the model's bytes decoded as UTF-8 across tokens (a character may span two), and the text
that might be the start of a stop string held back until it is known not to be. Figures: one
definition of TTFT and the decode rate, which the batching engine and the remote client share.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

from localrun.engine.types import Stats


class StopMatcher:
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


class TextOut:
    """One answer's bytes to the text it shows: decoded, and held back at a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.matcher = StopMatcher(stops)

    def feed(self, piece: bytes) -> tuple[str, bool]:
        """The text safe to show after ``piece``, and whether a stop string was reached."""
        return self.matcher.feed(self.decoder.decode(piece))

    def flush(self) -> str:
        """What was held back, at the end of an answer that did not stop at a stop string."""
        return self.matcher.flush() + self.decoder.decode(b"", final=True)


def timed(
    stats: Stats, *, start: float, first: float, last: float, sampled: int, end: float
) -> None:
    """Fill in an answer's rates from its moments (``time.perf_counter()``).

    TTFT runs from the request to its first token. Decoding runs from the first token to the
    last: ``sampled - 1`` tokens in that time (the first one is prefill's). Prefill's rate is
    the prompt tokens evaluated over the prefill time already in ``stats``.
    """
    if first:
        stats.ttft_s = first - start
        stats.decode_s = last - first
        if sampled > 1 and stats.decode_s > 0:
            stats.decode_tokens_per_s = (sampled - 1) / stats.decode_s
    if stats.prefill_s > 0:
        stats.prefill_tokens_per_s = stats.prompt_evaluated / stats.prefill_s
    stats.total_s = end - start
