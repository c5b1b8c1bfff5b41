"""Scoring replies against a persona: the judgments behind `guppy eval`.

- in character: follows the voice rules, no chat markup, no repetition loop, and the reply
  ended with the end-of-turn token instead of running into the length limit;
- on topic: uses at least one word the prompt's author expected;
- well-formed: a sentence the persona's own reply grammar could have produced (a new
  combination of slot values counts; word salad does not);
- distinct-n and copy rate: variety, and how much is recited from training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from guppylm import template
from guppylm.chat_format import SENTENCE_END, split_sentences
from guppylm.persona import Persona

MARKUP = re.compile(r"<\|[a-z]*\|?>?|\|>")
_WORD = re.compile(r"[\w']+")


@dataclass
class Verdict:
    in_character: bool
    on_topic: bool
    reasons: list[str]  # why it failed, empty when it passed

    @property
    def passed(self) -> bool:
        return self.in_character and self.on_topic


def judge(reply: str, ended: bool, expect: list[str], persona: Persona) -> Verdict:
    """Score one reply. `ended`: the model stopped with its end-of-turn token."""
    reasons = []
    if not reply.strip():
        reasons.append("empty")
    if persona.lowercase and reply != reply.lower():
        reasons.append("capitals")
    if len(reply.split()) > persona.max_words:
        reasons.append("too long")
    if MARKUP.search(reply):
        reasons.append("markup")
    if is_loop(reply):
        reasons.append("repetition")
    if not ended:
        reasons.append("cut off")
    on_topic = uses_any(reply, expect)
    if not on_topic:
        reasons.append("off topic")
    return Verdict(in_character=not (set(reasons) - {"off topic"}), on_topic=on_topic,
                   reasons=reasons)


def uses_any(reply: str, words: list[str]) -> bool:
    """Does the reply use one of `words`? Matched at word starts ("swim" finds "swimming")."""
    text = reply.lower()
    return any(re.search(rf"(?<![\w']){re.escape(w.lower())}", text) for w in words)


def is_loop(reply: str) -> bool:
    """A degenerate repetition: a sentence said twice, or a 3-word phrase said 3+ times."""
    sentences = [s.strip().lower() for s in split_sentences(reply) if len(s.split()) > 2]
    if len(sentences) != len(set(sentences)):
        return True
    words = _WORD.findall(reply.lower())
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return any(trigrams.count(t) >= 3 for t in set(trigrams))




# ----------------------------------------------------------------------------- grammar

class Grammar:
    """Every sentence a persona's reply templates can produce, as one regular expression."""

    def __init__(self, persona: Persona):
        self.pools = persona.pools
        self._slot_regex: dict[str, str] = {}
        patterns: set[str] = set()
        for topic in persona.topics:
            for nodes in topic.replies + topic.more:
                for sentence in _sentences(nodes, self.pools):
                    patterns.add(self._regex(sentence))
        for entries in self.pools.values():  # "blub. hello": its sentences stand alone too
            for entry in entries:
                if _holds_sentences(template.Optional(entry), self.pools):
                    patterns.update(self._regex(s) for s in _sentences(entry, self.pools))
        self.regex = re.compile("|".join(f"(?:{p})" for p in sorted(patterns)))

    def well_formed(self, sentence: str) -> bool:
        return self.regex.fullmatch(template.tidy(sentence)) is not None

    def share_well_formed(self, replies: list[str]) -> float:
        sentences = [s for r in replies for s in split_sentences(r)]
        return sum(map(self.well_formed, sentences)) / max(1, len(sentences))

    def _regex(self, nodes: tuple) -> str:
        parts = []
        for node in nodes:
            if isinstance(node, template.Text):
                words = template.tidy(node.text).split(" ")
                parts.append(" ?".join(re.escape(w) for w in words))
            elif isinstance(node, template.Slot):
                parts.append(self._slot(node.name))
            elif isinstance(node, template.Choice):
                parts.append("(?:" + "|".join(self._regex(o) for o in node.options) + ")")
            else:
                parts.append(f"(?:{self._regex(node.body)})?")
        return " ?".join(p for p in parts if p)

    def _slot(self, name: str) -> str:
        if name not in self._slot_regex:
            options = sorted({self._regex(entry) for entry in self.pools[name]})
            self._slot_regex[name] = "(?:" + "|".join(options) + ")"
        return self._slot_regex[name]


def _sentences(nodes: tuple, pools: dict) -> list[tuple]:
    """Split a template into sentence templates.

    Text is cut after '.', '!' or '?'; an optional part, a choice or a slot that holds
    whole sentences ("[i like it. ]the water is warm.") contributes its own sentences.
    """
    out: list[tuple] = []
    current: list = []

    def close() -> None:
        if any(not isinstance(n, template.Text) or n.text.strip() for n in current):
            out.append(tuple(current))
        current.clear()

    for node in nodes:
        if isinstance(node, template.Text):
            pieces = SENTENCE_END.split(node.text)
            for i, piece in enumerate(pieces):
                if piece.strip():
                    current.append(template.Text(piece))
                if i < len(pieces) - 1 or piece.rstrip().endswith((".", "!", "?")):
                    close()
        elif _holds_sentences(node, pools):
            close()
            if isinstance(node, template.Slot):
                bodies = pools[node.name]
            else:
                bodies = node.options if isinstance(node, template.Choice) else (node.body,)
            for body in bodies:
                out.extend(_sentences(body, pools))
        else:
            current.append(node)
    close()
    return out


def _holds_sentences(node, pools: dict) -> bool:
    if isinstance(node, template.Slot):  # a pool of whole sentences, such as jokes
        return all(template.longest(e, pools).endswith((".", "!", "?")) for e in pools[node.name])
    texts = template.literal_texts((node,))
    return any(re.search(r"[.!?](\s|$)", t) for t in texts)


# ----------------------------------------------------------------------------- variety

def distinct_n(replies: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams over the replies (1.0 = no n-gram repeats)."""
    grams = []
    for reply in replies:
        words = _WORD.findall(reply.lower())
        grams += [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def copy_rate(replies: list[str], train_replies: set[str]) -> float:
    """Share of replies that occur verbatim among the training replies."""
    return sum(r in train_replies for r in replies) / max(1, len(replies))
