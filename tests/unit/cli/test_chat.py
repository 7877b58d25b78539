"""The interactive chat loop and multi-line input, with scripted keystrokes instead of a terminal."""

from __future__ import annotations

import io
from collections.abc import Generator, Iterable
from typing import Any

import pytest

from model_cli.chat import ChatOptions, ChatSession, read_prompt, stream_answer
from model_cli.errors import ApiError, GatewayUnreachable
from model_cli.wire import ChatChunk


class Keys:
    """A read_line that replays lines; an exception in the script is raised instead."""

    def __init__(self, *script: str | BaseException) -> None:
        self.script = list(script)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.script:
            raise EOFError
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["  hello  "], "hello"),
        (['"""', "one", "two", '"""'], "one\ntwo"),
        (['"""first', "second", 'third"""'], "first\nsecond\nthird"),
        (['"""all on one line"""'], "all on one line"),
        (['""""""'], ""),
        (['"""', "  indented", "", '"""'], "indented"),
    ],
)
def test_read_prompt(lines: list[str], expected: str) -> None:
    keys = Keys(*lines)
    assert read_prompt(keys) == expected
    assert keys.prompts[0] == "> "
    assert all(prompt == "... " for prompt in keys.prompts[1:])


def test_ctrl_d_inside_multiline_input_passes_through() -> None:
    with pytest.raises(EOFError):
        read_prompt(Keys('"""', "unfinished"))


class FakeModel:
    """Answers each request with scripted chunks; records the conversations it was sent."""

    def __init__(self, *answers: Iterable[ChatChunk] | BaseException) -> None:
        self.answers = list(answers)
        self.sent: list[list[dict[str, str]]] = []
        self.closed = 0

    def __call__(self, body: dict[str, Any]) -> Generator[ChatChunk, None, None]:
        self.sent.append([dict(m) for m in body["messages"]])
        answer = self.answers.pop(0)
        return self._stream(answer)

    def _stream(
        self, answer: Iterable[ChatChunk] | BaseException
    ) -> Generator[ChatChunk, None, None]:
        try:
            if isinstance(answer, BaseException):
                yield ChatChunk(content="partial")
                raise answer
            yield from answer
        finally:
            self.closed += 1


def session(
    model: FakeModel, keys: Keys, **options: Any
) -> tuple[ChatSession, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return (
        ChatSession("ai/m", ChatOptions(**options), model, keys, out, err),
        out,
        err,
    )


def words(*parts: str) -> list[ChatChunk]:
    return [ChatChunk(content=part) for part in parts]


def test_a_conversation_keeps_its_history_until_bye() -> None:
    model = FakeModel(words("Hi", " there"), words("Four"))
    chat, out, _ = session(
        model, Keys("hello", "what is 2+2", "/bye", "never read"), system="Be brief"
    )
    chat.run()
    assert model.sent == [
        [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "hello"}],
        [
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "Hi there"},
            {"role": "user", "content": "what is 2+2"},
        ],
    ]
    assert out.getvalue().endswith("Hi there\nFour\n")


def test_ctrl_c_during_an_answer_closes_it_and_forgets_the_question() -> None:
    model = FakeModel(KeyboardInterrupt(), words("fine"))
    chat, out, _ = session(model, Keys("long story", "short one"))
    chat.run()  # ends on Ctrl-D (the script runs out)
    assert model.closed == 2
    assert model.sent[1] == [{"role": "user", "content": "short one"}]
    assert chat.history == [
        {"role": "user", "content": "short one"},
        {"role": "assistant", "content": "fine"},
    ]
    assert "partial\n" in out.getvalue()


def test_ctrl_c_at_the_prompt_does_not_leave() -> None:
    model = FakeModel(words("yes"))
    chat, out, _ = session(model, Keys(KeyboardInterrupt(), "still here?"))
    chat.run()
    assert "Use Ctrl + d or /bye to exit." in out.getvalue()
    assert model.sent == [[{"role": "user", "content": "still here?"}]]


def test_commands() -> None:
    model = FakeModel(words("a"), words("b"))
    chat, out, _ = session(model, Keys("one", "/clear", "/?", "/what", "two", "/bye"))
    chat.run()
    text = out.getvalue()
    assert "Cleared the conversation." in text
    assert "/bye" in text and "multi-line" in text
    assert "Unknown command '/what'. Type /? for help." in text
    assert model.sent[1] == [{"role": "user", "content": "two"}]


def test_a_failed_answer_is_reported_and_the_chat_goes_on() -> None:
    model = FakeModel(ApiError(503, "no worker can serve"), words("ok"))
    chat, _, err = session(model, Keys("first", "second"))
    chat.run()
    assert err.getvalue() == "\nError: no worker can serve\n"
    assert chat.history[-1] == {"role": "assistant", "content": "ok"}
    assert len(chat.history) == 2


def test_an_unreachable_gateway_ends_the_chat() -> None:
    model = FakeModel(GatewayUnreachable("http://x"))
    chat, _, _ = session(model, Keys("hello"))
    with pytest.raises(GatewayUnreachable):
        chat.run()


def test_reasoning_is_shown_apart_from_the_answer() -> None:
    out = io.StringIO()
    chunks = [ChatChunk(reasoning="think"), ChatChunk(reasoning="ing"), ChatChunk(content="42")]
    answer = stream_answer(iter_chunks(chunks), out)
    assert answer.text == "42"
    assert out.getvalue() == "Thinking:\nthinking\n\n--\n\n42"


def iter_chunks(chunks: list[ChatChunk]) -> Generator[ChatChunk, None, None]:
    yield from chunks
