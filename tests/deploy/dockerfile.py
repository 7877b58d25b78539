"""A reader for the parts of a Dockerfile the deploy tests compare: stages and what each target
inherits (ENV, CMD, HEALTHCHECK, EXPOSE, USER, COPY).

It follows Docker's rules where they matter here: line continuations, comments, `FROM x AS y`
chains through earlier stages, build args substituted into FROM, the last CMD/HEALTHCHECK
winning. It is not a general Dockerfile parser; hadolint (the real one) lints the file.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Copy", "Dockerfile", "Instruction", "Stage", "Target"]

_VARIABLE = re.compile(r"\$\{(\w+)(?::[-+][^}]*)?\}|\$(\w+)")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    destination: str
    from_stage: str | None


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """What a container started from one target gets."""

    name: str
    env: Mapping[str, str]
    cmd: tuple[str, ...]
    healthcheck: tuple[str, ...]
    healthcheck_options: Mapping[str, str]
    exposed: tuple[int, ...]
    user: str
    copies: tuple[Copy, ...]
    chain: tuple[str, ...]


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Instructions with continuations joined; comment lines (also inside continuations) dropped."""
    lines: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not current:
            start = number
        if stripped.endswith("\\"):
            current.append(stripped[:-1].strip())
            continue
        current.append(stripped)
        lines.append((start, " ".join(part for part in current if part)))
        current = []
    if current:
        lines.append((start, " ".join(current)))
    return lines


def _substitute(text: str, values: Mapping[str, str]) -> str:
    return _VARIABLE.sub(lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def _exec_form(arguments: str) -> tuple[str, ...]:
    value = json.loads(arguments)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"not an exec-form array: {arguments}")
    return tuple(value)


class Dockerfile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.global_args: dict[str, str] = {}
        self.stages: list[Stage] = []
        for line, text in _logical_lines(path.read_text()):
            keyword, _, arguments = text.partition(" ")
            instruction = Instruction(keyword.upper(), arguments.strip(), line)
            if instruction.keyword == "FROM":
                words = instruction.arguments.split()
                words = [word for word in words if not word.startswith("--")]
                base = words[0]
                name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else base
                self.stages.append(Stage(name=name, base=base))
            elif not self.stages:
                if instruction.keyword == "ARG":
                    key, _, default = instruction.arguments.partition("=")
                    self.global_args[key.strip()] = default.strip().strip('"')
            else:
                self.stages[-1].instructions.append(instruction)

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"{self.path}: no stage {name!r}")

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(stage.name for stage in self.stages)

    def chain(self, name: str, build_args: Mapping[str, str] | None = None) -> tuple[Stage, ...]:
        """The stages `name` is built on, outermost first (external images end the chain)."""
        args = {**self.global_args, **(build_args or {})}
        chain: list[Stage] = []
        stage = self.stage(name)
        while True:
            chain.append(stage)
            base = _substitute(stage.base, args)
            if base not in self.stage_names:
                break
            stage = self.stage(base)
        return tuple(reversed(chain))

    def target(self, name: str, build_args: Mapping[str, str] | None = None) -> Target:
        env: dict[str, str] = {}
        cmd: tuple[str, ...] = ()
        healthcheck: tuple[str, ...] = ()
        options: dict[str, str] = {}
        exposed: list[int] = []
        user = "root"
        copies: list[Copy] = []
        chain = self.chain(name, build_args)
        for stage in chain:
            for instruction in stage.instructions:
                keyword, arguments = instruction.keyword, instruction.arguments
                if keyword == "ENV":
                    env.update(self._env_pairs(arguments))
                elif keyword == "CMD":
                    cmd = _exec_form(arguments)
                elif keyword == "HEALTHCHECK":
                    words = arguments.split()
                    index = words.index("CMD")
                    options = dict(word.lstrip("-").split("=", 1) for word in words[:index])
                    healthcheck = _exec_form(arguments.split("CMD", 1)[1].strip())
                elif keyword == "EXPOSE":
                    exposed.extend(int(port.split("/")[0]) for port in arguments.split())
                elif keyword == "USER":
                    user = arguments
                elif keyword == "COPY":
                    copies.append(self._copy(arguments))
        return Target(
            name=name,
            env=env,
            cmd=cmd,
            healthcheck=healthcheck,
            healthcheck_options=options,
            exposed=tuple(exposed),
            user=user,
            copies=tuple(copies),
            chain=tuple(stage.name for stage in chain),
        )

    @staticmethod
    def _env_pairs(arguments: str) -> dict[str, str]:
        words = shlex.split(arguments)
        if words and "=" not in words[0]:
            # Legacy `ENV KEY value with spaces`.
            return {words[0]: " ".join(words[1:])}
        return dict(word.split("=", 1) for word in words)

    @staticmethod
    def _copy(arguments: str) -> Copy:
        words = shlex.split(arguments)
        flags = {
            word[2:].split("=", 1)[0]: word.split("=", 1)[1]
            for word in words
            if word.startswith("--") and "=" in word
        }
        paths = [word for word in words if not word.startswith("--")]
        return Copy(tuple(paths[:-1]), paths[-1], flags.get("from"))
