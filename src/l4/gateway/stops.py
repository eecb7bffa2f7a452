"""Stop strings checked by the gateway on the stitched text of a request.

An engine only sees the text of its own hop, so a stop string that spans a migration's join is
invisible to both engines: the gateway checks stop strings itself, over everything it relays,
and sends the engines none. As vLLM does, a stop string counts only once `min_tokens` tokens
exist, the text is cut before it (or after it with `include_stop_str_in_output`), and while stop
strings are active the last `len(longest) - 1` characters are held back so that no part of a stop
string is ever streamed.

Guarantees: the concatenation of what `feed` and `flush` release equals the text relayed, cut
where vLLM would cut it; after a hit, `feed` releases nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class StopHit:
    text: str  # what to release before finishing
    stop: str


class StopStrings:
    """Only the held-back tail is kept: a stop string can never start in released text, because
    the last ``len(longest) - 1`` characters are always held (so the search is O(delta))."""

    __slots__ = ("_hold", "_include", "_min_tokens", "_pending", "_stops", "done")

    def __init__(self, stops: tuple[str, ...], *, min_tokens: int, include: bool) -> None:
        self._stops = stops
        self._min_tokens = min_tokens
        self._include = include
        self._hold = max((len(s) for s in stops), default=1) - 1
        self._pending = ""
        self.done = False

    def feed(self, text: str, num_generated: int) -> str | StopHit:
        """Add a delta's text; what may be released now, or the hit that ends the request."""
        if self.done:
            return ""
        if not self._stops:
            return text
        buf = self._pending + text
        if num_generated >= self._min_tokens:
            hit = self._find(buf)
            if hit is not None:
                at, stop = hit
                self.done = True
                self._pending = ""
                return StopHit(text=buf[: at + len(stop) if self._include else at], stop=stop)
        cut = max(0, len(buf) - self._hold)
        self._pending = buf[cut:]
        return buf[:cut]

    def flush(self) -> str:
        """The held-back tail, once the request ends for another reason."""
        out, self._pending = self._pending, ""
        return "" if self.done else out

    def _find(self, buf: str) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for s in self._stops:
            i = buf.find(s)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        return best
