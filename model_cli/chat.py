"""Streaming answers and the interactive chat of `run`.

Tokens are written to the output as they arrive. In the interactive loop (stdlib readline gives
line editing and history for the session) a line starting with `\"\"\"` opens multi-line input
that ends at a line ending with `\"\"\"`; `/bye` or Ctrl-D leaves; Ctrl-C while an answer streams
closes that stream (the gateway then stops generating) and returns to the prompt; Ctrl-C at the
prompt only discards the line.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, TextIO

from model_cli.errors import CliError, GatewayUnreachable
from model_cli.wire import ChatChunk

__all__ = [
    "MULTILINE",
    "Answer",
    "ChatOptions",
    "ChatSession",
    "one_shot",
    "read_prompt",
    "stream_answer",
]

MULTILINE = '"""'
PROMPT = "> "
CONTINUATION = "... "
_HELP = f"""Available commands:
  /bye            Exit
  /clear          Forget the conversation so far
  /?, /help       Show this help
Use {MULTILINE} to begin and end a multi-line message.
"""

Json = Any
ChunkStream = Generator[ChatChunk, None, None]
ReadLine = Callable[[str], str]


@dataclass(frozen=True)
class ChatOptions:
    """Sampling settings sent with every request; None leaves the server's default."""

    temperature: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    system: str | None = None

    def body(self, model: str, messages: list[dict[str, str]]) -> dict[str, Json]:
        full = [{"role": "system", "content": self.system}, *messages] if self.system else messages
        body: dict[str, Json] = {"model": model, "messages": full}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.seed is not None:
            body["seed"] = self.seed
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body


@dataclass
class Answer:
    text: str = ""
    chunks: int = 0


def stream_answer(chunks: ChunkStream, out: TextIO, answer: Answer | None = None) -> Answer:
    """Write content as it arrives (and into `answer`, which holds what arrived even when the
    stream fails); reasoning (thinking models) goes first, under a header. The stream is closed
    on every exit path, so an interrupt stops the generation."""
    answer = answer if answer is not None else Answer()
    thinking = False
    with closing(chunks):
        for chunk in chunks:
            if chunk.reasoning:
                if not thinking:
                    out.write("Thinking:\n")
                    thinking = True
                out.write(chunk.reasoning)
            if chunk.content:
                if thinking:
                    out.write("\n\n--\n\n")
                    thinking = False
                out.write(chunk.content)
                answer.text += chunk.content
                answer.chunks += 1
            out.flush()
    return answer


def read_prompt(read_line: ReadLine) -> str:
    """One message: a line, or `\"\"\"`-delimited lines. EOFError/KeyboardInterrupt pass through."""
    line = read_line(PROMPT)
    if not line.lstrip().startswith(MULTILINE):
        return line.strip()
    rest = line.lstrip()[len(MULTILINE) :]
    if rest.rstrip().endswith(MULTILINE):
        return rest.rstrip()[: -len(MULTILINE)].strip()
    lines = [rest] if rest.strip() else []
    while True:
        line = read_line(CONTINUATION)
        if line.rstrip().endswith(MULTILINE):
            last = line.rstrip()[: -len(MULTILINE)]
            if last.strip():
                lines.append(last)
            return "\n".join(lines).strip()
        lines.append(line)


@dataclass
class ChatSession:
    """The interactive loop; `ask` sends the conversation and yields the streamed chunks."""

    model: str
    options: ChatOptions
    ask: Callable[[dict[str, Json]], ChunkStream]
    read_line: ReadLine
    out: TextIO
    err: TextIO
    history: list[dict[str, str]] = field(default_factory=list)

    def _say(self, text: str, stream: TextIO | None = None) -> None:
        target = stream or self.out
        target.write(text)
        target.flush()

    def run(self) -> None:
        self._say(
            f"Interactive chat mode started. Type '/bye' to exit ({MULTILINE} for multi-line).\n"
        )
        while True:
            try:
                message = read_prompt(self.read_line)
            except EOFError:
                self._say("\n")
                return
            except KeyboardInterrupt:
                self._say("\nUse Ctrl + d or /bye to exit.\n")
                continue
            if not message:
                continue
            if message.startswith("/") and self._command(message):
                return
            if not message.startswith("/"):
                self._exchange(message)

    def _command(self, message: str) -> bool:
        """True when the command ends the session."""
        name = message.split()[0].lower()
        if name == "/bye":
            return True
        if name == "/clear":
            self.history.clear()
            self._say("Cleared the conversation.\n")
        elif name in ("/?", "/help"):
            self._say(_HELP)
        else:
            self._say(f"Unknown command '{name}'. Type /? for help.\n")
        return False

    def _exchange(self, message: str) -> None:
        self.history.append({"role": "user", "content": message})
        try:
            answer = stream_answer(self.ask(self.options.body(self.model, self.history)), self.out)
        except KeyboardInterrupt:
            # The stream is closed; forget the question so the next one starts clean.
            self.history.pop()
            self._say("\n")
            return
        except GatewayUnreachable:
            raise
        except CliError as exc:
            self.history.pop()
            self._say(f"\nError: {exc.one_line()}\n", self.err)
            return
        self.history.append({"role": "assistant", "content": answer.text})
        self._say("\n")


def one_shot(
    ask: Callable[[dict[str, Json]], ChunkStream],
    model: str,
    prompt: str,
    options: ChatOptions,
    out: TextIO,
) -> Answer:
    """`run MODEL PROMPT`: the answer streamed to `out`, ending with a newline (also when it
    breaks off, so an error message starts on a line of its own)."""
    answer = Answer()
    try:
        stream_answer(ask(options.body(model, [{"role": "user", "content": prompt}])), out, answer)
    except BaseException:
        if answer.text and not answer.text.endswith("\n"):
            out.write("\n")
            out.flush()
        raise
    if not answer.text.endswith("\n"):
        out.write("\n")
        out.flush()
    return answer
