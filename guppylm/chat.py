"""Talking to a trained model: the `Guppy` class, for the CLI, notebooks and the server.

    from guppylm import Guppy
    g = Guppy.load("runs/guppy")
    g.reply("hi guppy")                                  # one turn
    g.chat([{"role": "user", "content": "hi"}, ...])     # with history
    g.respond(messages)                                  # Reply(text, topic, finish)
    for chunk in g.stream(messages): ...                 # Chunk(text, topic, finish)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch

from guppylm.chat_format import encode_chat, opening_to_avoid
from guppylm.checkpoint import load_run
from guppylm.decode import BatchDecoder, Chunk, Sequence
from guppylm.generate import SamplingConfig, choose_topic
from guppylm.model import GPT
from guppylm.tokenizer import Tokenizer


class Reply(NamedTuple):
    text: str
    topic: str | None  # the topic the model named before replying
    finish: str  # "stop": the model ended its turn; "length": it did not

    @property
    def ended(self) -> bool:
        return self.finish == "stop"

    def message(self, with_topic: bool = False) -> dict:
        """As an assistant message for the history: `content` only, as chat clients send it
        back, or with the topic too."""
        message = {"role": "assistant", "content": self.text}
        return {**message, "topic": self.topic} if with_topic and self.topic else message


class Guppy:
    """A trained model, its tokenizer and sampling settings, loaded from a run folder."""

    def __init__(self, model: GPT, tok: Tokenizer, sampling: SamplingConfig | None = None,
                 name: str = "guppy"):
        self.model, self.tok, self.name = model.eval(), tok, name
        self.sampling = sampling or SamplingConfig()

    @classmethod
    def load(cls, run: str | Path, device: str = "cpu", **sampling) -> Guppy:
        """The model of a run folder; `sampling` sets SamplingConfig's fields."""
        model, tok, config = load_run(Path(run), device)
        return cls(model, tok, SamplingConfig(**sampling), name=config.get("persona_name", "guppy"))

    def prompt_ids(self, messages: list[dict], max_new_tokens: int) -> list[int]:
        """Ids for the history plus the reply cue, leaving room for the reply: the oldest
        turns are dropped, and the newest message alone is cut if it is too long.

        Chat clients send past replies back as `content` only; each gets back the topic the
        model names at that point (`restore_topics`), so the model reads its history as it
        wrote it.
        """
        context = self.model.cfg.context
        budget = context - min(max_new_tokens, context // 2)
        kept = self._trimmed(list(messages), budget)
        while True:
            ids, _ = encode_chat(self.tok, self.restore_topics(kept), add_generation_prompt=True)
            if len(ids) <= budget or len(kept) <= 1:
                return ids
            kept = kept[2:] if len(kept) > 2 else kept[1:]

    def _trimmed(self, messages: list[dict], budget: int) -> list[dict]:
        while True:
            ids, _ = encode_chat(self.tok, messages, add_generation_prompt=True)
            if len(ids) <= budget:
                return messages
            if len(messages) > 1:
                messages = messages[2:] if len(messages) > 2 else messages[1:]
                continue
            # one message too long: keep its first tokens
            content = self.tok.encode(messages[0]["content"])[: budget - 4]
            messages = [{**messages[0], "content": self.tok.decode(content)}]

    @torch.inference_mode()
    def restore_topics(self, messages: list[dict]) -> list[dict]:
        """`messages` with each past assistant reply that has no topic given the topic the
        model names there, chosen as chat chooses it (greedily, if it names one at all)."""
        if not self.tok.topics:
            return messages
        topic_ids = torch.tensor(sorted(self.tok.topics))
        device = next(self.model.parameters()).device
        out: list[dict] = []
        for message in messages:
            if message["role"] == "assistant" and not message.get("topic"):
                ids, _ = encode_chat(self.tok, out, add_generation_prompt=True)
                ids = ids[-self.model.cfg.context:]
                logits = self.model(torch.tensor([ids], device=device))[0, -1].cpu()
                topic = choose_topic(logits, topic_ids, SamplingConfig(temperature=0))
                if topic is not None:
                    message = {**message, "topic": self.tok.topics[topic]}
            out.append(message)
        return out

    def stream(self, messages: list[dict], **overrides) -> Iterator[Chunk]:
        """The reply to `messages` as it is generated: a `Chunk` naming the topic (when the
        model names one), chunks of reply text, and a last chunk saying why it finished.

        `overrides` change the sampling for this reply (temperature=0, seed=1, ...). A
        sampled reply does not open with the sentence the previous reply opened with: small
        models copy from their context, and a fish that repeats itself is the first thing a
        person notices. So the opening sentence is held back until it is complete, and if
        it repeats, the reply is drawn again (at most decode.OPENING_TRIES times, then kept).

        The reply is decoded by decode.py's BatchDecoder, as a batch of one: the server and
        `guppy eval` decode many replies together with the same code, and a seed gives the
        same reply in all three.
        """
        cfg = replace(self.sampling, **overrides)
        avoid = opening_to_avoid(messages) if cfg.temperature > 0 else ""
        decoder = BatchDecoder(self.model, self.tok)
        decoder.add(Sequence(self.prompt_ids(messages, cfg.max_new_tokens), cfg, avoid=avoid))
        while decoder.active:
            for _, chunk in decoder.step():
                yield chunk

    def respond(self, messages: list[dict], **overrides) -> Reply:
        """The next reply, the topic the model named for it, and why it finished."""
        text, topic, finish = "", None, "length"
        for chunk in self.stream(messages, **overrides):
            text += chunk.text
            topic = chunk.topic or topic
            finish = chunk.finish or finish
        return Reply(text, topic, finish)

    def chat(self, messages: list[dict], **overrides) -> str:
        """The assistant's next reply to a conversation."""
        return self.respond(messages, **overrides).text

    def reply(self, text: str, **overrides) -> str:
        """A one-turn reply to `text`."""
        return self.chat([{"role": "user", "content": text}], **overrides)
