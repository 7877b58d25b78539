"""Token counts of one answer, read from its bytes as they pass, in any dialect the gateway speaks.

The metrics (metrics/meter.py) count the engine's answer; the rate limiter (auth.py) counts what
the client was sent, which may be Anthropic's or Ollama's translation. Both feed body chunks to a
`UsageScanner` and ask it once the answer is done. Chunks are never parsed: the scanner keeps the
answer's tail (usage is always in an answer's last object) and searches it for a count's key. A raw
`"` never occurs inside a JSON string (it is escaped as `\\"`), so generated text cannot forge a
key. The last figures win, since a stream may report usage more than once.

Dialects, in order of preference: OpenAI's `usage` (`prompt_tokens`, `completion_tokens`),
Anthropic's (`input_tokens`, `output_tokens`), Ollama's (`prompt_eval_count`, `eval_count`), and
llama-server's `timings` (`prompt_n`, `predicted_n`), which every llama-server answer ends with
even when no usage was asked for (its prompt count leaves out tokens reused from the prompt cache).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Usage", "UsageScanner"]

# Enough for the final object of any dialect (usage plus llama-server's timings).
_TAIL_BYTES = 8192
_DIALECTS = tuple(
    (re.compile(rb'"' + prompt + rb'"\s*:\s*(\d+)'), re.compile(rb'"' + output + rb'"\s*:\s*(\d+)'))
    for prompt, output in (
        (b"prompt_tokens", b"completion_tokens"),
        (b"input_tokens", b"output_tokens"),
        (b"prompt_eval_count", b"eval_count"),
        (b"prompt_n", b"predicted_n"),
    )
)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageScanner:
    """Feed it an answer's body chunks; `usage()` is what the answer says it used, if it says."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        if chunk:
            self._tail = (self._tail + chunk)[-_TAIL_BYTES:]

    def usage(self) -> Usage | None:
        for prompt, output in _DIALECTS:
            prompt_tokens, output_tokens = _last(prompt, self._tail), _last(output, self._tail)
            if prompt_tokens is not None or output_tokens is not None:
                return Usage(prompt_tokens or 0, output_tokens or 0)
        return None


def _last(pattern: re.Pattern[bytes], data: bytes) -> int | None:
    matches = pattern.findall(data)
    return int(matches[-1]) if matches else None
