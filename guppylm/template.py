"""The tiny template language that persona files are written in.

    {slot}        a random entry of the slot pool named `slot` (entries may be templates too)
    (a|b|c)       one of the alternatives, picked at random
    [words]       optional: included half of the time

Everything else is literal text. A template is parsed once into a tree of nodes and
expanded many times, so generating tens of thousands of conversations stays fast.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass


class TemplateError(ValueError):
    """A template that cannot be parsed; the message says what is wrong."""


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Slot:
    name: str


@dataclass(frozen=True)
class Choice:
    options: tuple[tuple, ...]  # each option is a sequence of nodes


@dataclass(frozen=True)
class Optional:
    body: tuple


_SPECIAL = re.compile(r"[{}()\[\]|]")
_SLOT_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def parse(source: str) -> tuple:
    """Parse `source` into a sequence of nodes; raise TemplateError on bad syntax."""
    nodes, pos, stop = _parse_sequence(source, 0, closers="")
    if pos != len(source):
        raise TemplateError(f"unexpected '{stop}' at character {pos + 1}")
    return nodes


def _parse_sequence(src: str, pos: int, closers: str) -> tuple[tuple, int, str]:
    """Parse nodes until one of `closers` (or '|') or the end; return (nodes, pos, stopper)."""
    nodes: list = []
    while pos < len(src):
        match = _SPECIAL.search(src, pos)
        end = match.start() if match else len(src)
        if end > pos:
            nodes.append(Text(src[pos:end]))
        if not match:
            return tuple(nodes), len(src), ""
        char, pos = match.group(), match.start()
        if char in closers or char == "|":
            return tuple(nodes), pos, char
        if char == "{":
            close = src.find("}", pos)
            name = src[pos + 1 : close] if close != -1 else ""
            if close == -1 or not _SLOT_NAME.fullmatch(name):
                raise TemplateError(f"bad slot at character {pos + 1}: write {{name}} "
                                    "with lowercase letters, digits and _")
            nodes.append(Slot(name))
            pos = close + 1
        elif char == "(":
            options, pos = _parse_choice(src, pos + 1)
            nodes.append(Choice(options))
        elif char == "[":
            body, pos, stop = _parse_sequence(src, pos + 1, closers="]")
            if stop != "]":
                raise TemplateError(f"'[' at character {pos + 1} is never closed with ']'")
            nodes.append(Optional(body))
            pos += 1
        else:  # a closer that does not belong here: ')' ']' '}'
            raise TemplateError(f"unexpected '{char}' at character {pos + 1}")
    return tuple(nodes), pos, ""


def _parse_choice(src: str, pos: int) -> tuple[tuple, int]:
    start = pos
    options = []
    while True:
        option, pos, stop = _parse_sequence(src, pos, closers=")")
        options.append(option)
        if stop == ")":
            return tuple(options), pos + 1
        if stop != "|":
            raise TemplateError(f"'(' at character {start} is never closed with ')'")
        pos += 1


def slots_used(nodes: tuple) -> set[str]:
    """Every slot name that appears anywhere in the node tree."""
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, Slot):
            names.add(node.name)
        elif isinstance(node, Choice):
            for option in node.options:
                names |= slots_used(option)
        elif isinstance(node, Optional):
            names |= slots_used(node.body)
    return names


def expand(nodes: tuple, pools: dict[str, list[tuple]], rng: random.Random) -> str:
    """Expand a parsed template into a string, drawing every choice from `rng`."""
    parts: list[str] = []
    _expand_into(nodes, pools, rng, parts)
    return tidy("".join(parts))


def _expand_into(nodes: tuple, pools: dict, rng: random.Random, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, Text):
            out.append(node.text)
        elif isinstance(node, Slot):
            pool = pools[node.name]
            _expand_into(pool[int(rng.random() * len(pool))], pools, rng, out)
        elif isinstance(node, Choice):
            _expand_into(node.options[int(rng.random() * len(node.options))], pools, rng, out)
        elif rng.random() < 0.5:  # Optional
            _expand_into(node.body, pools, rng, out)


def longest(nodes: tuple, pools: dict[str, list[tuple]], memo: dict | None = None) -> str:
    """The expansion with the most words (every option included, the wordiest choice taken).

    Used to check a voice rule such as "at most 40 words" before any data is generated.
    Slots must not be recursive (the persona loader checks that first).
    """
    memo = {} if memo is None else memo
    parts: list[str] = []
    for node in nodes:
        if isinstance(node, Text):
            parts.append(node.text)
        elif isinstance(node, Slot):
            if node.name not in memo:
                entries = (longest(entry, pools, memo) for entry in pools[node.name])
                memo[node.name] = max(entries, key=_words)
            parts.append(memo[node.name])
        elif isinstance(node, Choice):
            parts.append(max((longest(o, pools, memo) for o in node.options), key=_words))
        else:
            parts.append(longest(node.body, pools, memo))
    return tidy("".join(parts))


def literal_texts(nodes: tuple) -> list[str]:
    """All literal text in the tree (slots not followed), e.g. to check a lowercase rule."""
    texts: list[str] = []
    for node in nodes:
        if isinstance(node, Text):
            texts.append(node.text)
        elif isinstance(node, Choice):
            for option in node.options:
                texts += literal_texts(option)
        elif isinstance(node, Optional):
            texts += literal_texts(node.body)
    return texts


def _words(text: str) -> int:
    return len(text.split())


_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:])")
_SPACES = re.compile(r"\s+")


def tidy(text: str) -> str:
    """Collapse the spaces that optional parts leave behind, and none before punctuation."""
    return _SPACE_BEFORE_PUNCT.sub(r"\1", _SPACES.sub(" ", text)).strip()
