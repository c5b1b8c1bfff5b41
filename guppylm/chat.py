"""Talking to a trained model: the `Guppy` class (for notebooks and the server) and the
interactive `guppy chat` loop.

    from guppylm import Guppy
    g = Guppy.load("runs/guppy")
    g.reply("hi guppy")                       # one turn
    g.chat([{"role": "user", "content": "hi"}, ...])   # with history
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from safetensors.torch import load_file

from guppylm.chat_format import TOPIC_SEP, normalize_user_text, split_topic
from guppylm.checkpoint import read_config
from guppylm.errors import GuppyError
from guppylm.generate import SamplingConfig, stream
from guppylm.model import GPT, GPTConfig
from guppylm.tokenizer import Tokenizer, encode_chat

RUN_FILES = ("config.json", "tokenizer.json", "model.safetensors")


class Reply(NamedTuple):
    text: str
    topic: str | None  # the topic the model named before replying
    ended: bool  # the model ended its turn itself

    def message(self) -> dict:
        """As an assistant message for the history (the topic keeps the next turn's ids
        exactly as in training)."""
        message = {"role": "assistant", "content": self.text}
        return {**message, "topic": self.topic} if self.topic else message


def finish(pieces: Generator[str, None, Reply],
           show: Callable[[str], None] | None = None) -> Reply:
    """Run a reply stream to its end, handing each piece to `show`; return the Reply."""
    while True:
        try:
            piece = next(pieces)
        except StopIteration as done:
            return done.value
        if show is not None:
            show(piece)


class Guppy:
    """A trained model, its tokenizer and sampling settings, loaded from a run folder."""

    def __init__(self, model: GPT, tok: Tokenizer, sampling: SamplingConfig | None = None,
                 name: str = "guppy"):
        self.model, self.tok, self.name = model.eval(), tok, name
        self.sampling = sampling or SamplingConfig()

    @classmethod
    def load(cls, run: str | Path, device: str = "cpu", **sampling) -> Guppy:
        run = Path(run)
        if not run.is_dir():
            raise GuppyError(f"{run}: no such run folder; train one with `guppy run` "
                             f"or `guppy train --run {run}`")
        for name in RUN_FILES:
            if not (run / name).is_file():
                raise GuppyError(f"{run}: incomplete run folder ({name} missing); finish it with "
                                 f"`guppy train --run {run} --resume` or retrain with `guppy run`")
        config = read_config(run)
        model = GPT(GPTConfig(**config["model"]))
        path = run / "model.safetensors"
        try:
            weights = load_file(str(path))
        except Exception as e:  # safetensors raises several types for a bad file
            why = str(e).splitlines()[0][:120]
            raise GuppyError(f"{path}: unreadable weights ({why}); retrain with "
                             "`guppy train`") from None
        try:
            missing, unexpected = model.load_state_dict(weights, strict=False)
        except RuntimeError:  # a tensor of the wrong shape
            missing, unexpected = [], ["(shapes)"]
        if unexpected or set(missing) - {"lm_head.weight"}:  # the head is the tied embedding
            raise GuppyError(f"{path}: weights do not match config.json; retrain with "
                             "`guppy train`")
        model.lm_head.weight = model.wte.weight  # re-tie after loading
        tok = Tokenizer.load(run / "tokenizer.json")
        return cls(model.to(device), tok, SamplingConfig(**sampling),
                   name=config.get("persona_name", "guppy"))

    def prompt_ids(self, messages: list[dict], max_new_tokens: int) -> list[int]:
        """Ids for the history plus the reply cue, dropping the oldest turns to leave room
        for the reply, and cutting the newest message itself if it alone is too long."""
        context = self.model.cfg.context
        budget = context - min(max_new_tokens, context // 2)
        messages = list(messages)
        while True:
            ids, _ = encode_chat(self.tok, messages, add_generation_prompt=True)
            if len(ids) <= budget:
                return ids
            if len(messages) > 1:
                messages = messages[2:] if len(messages) > 2 else messages[1:]
                continue
            # one message too long: keep its first tokens
            content = self.tok.encode(messages[0]["content"])[: budget - 4]
            messages = [{**messages[0], "content": self.tok.decode(content)}]

    def stream_reply(self, messages: list[dict], show_topic: bool = False,
                     **overrides) -> Generator[str, None, Reply]:
        """Yield the reply as text pieces as the tokens are generated; return the `Reply`.

        The model first names the topic ("food | i like flakes."): that part is held back,
        or shown as "[food] " with `show_topic`.
        """
        tokens = self._tokens(messages, replace(self.sampling, **overrides))
        new: list[int] = []
        shown = None  # how much of the decoded text is out; None until the topic is named
        while True:
            try:
                new.append(next(tokens))
            except StopIteration as stop:  # the generator's return value: did it end?
                ended = stop.value
                break
            text = self.tok.decode(new)
            if text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                continue
            if shown is None and TOPIC_SEP in text:
                shown = text.index(TOPIC_SEP) + len(TOPIC_SEP)
                if show_topic:
                    yield f"[{text[:shown - len(TOPIC_SEP)].strip()}] "
            if shown is not None and len(text) > shown:
                yield text[shown:]
                shown = len(text)
        topic, reply = split_topic(self.tok.decode(new))
        if shown is None and reply:  # the model named no topic: show it all now
            yield reply
        return Reply(reply, topic, ended)

    def respond(self, messages: list[dict], **overrides) -> Reply:
        """The next reply, the topic the model named for it, and whether the model ended its
        turn (False when it ran into the length limit or began another turn itself)."""
        return finish(self.stream_reply(messages, **overrides))

    def _tokens(self, messages: list[dict], cfg: SamplingConfig) -> Generator[int, None, bool]:
        """Yield the reply's tokens; return True if the model ended its turn itself.

        The topic the model names first is chosen at `cfg.topic_temperature` (the likeliest,
        by default), the reply after it at `cfg.temperature`.
        """
        ids = self.prompt_ids(messages, cfg.max_new_tokens)
        limit = min(cfg.max_new_tokens, self.model.cfg.context - len(ids))
        new: list[int] = []
        topic_cfg = replace(cfg, temperature=cfg.topic_temperature)
        for token in self._stream(ids, topic_cfg):
            if token is None:
                return False  # the model tried to start a new turn itself
            new.append(token)
            yield token
            if TOPIC_SEP.strip() in self.tok.decode(new):
                break  # the topic is named: the reply follows
        else:  # it ended (or hit the limit) without naming a topic
            return len(new) < limit
        if len(new) >= limit:
            return False
        for token in self._stream(ids + new, replace(cfg, max_new_tokens=limit - len(new))):
            if token is None:
                return False
            new.append(token)
            yield token
        return len(new) < limit  # fewer than the limit: it stopped at <|end|>

    def _stream(self, ids: list[int], cfg: SamplingConfig) -> Iterator[int | None]:
        """New tokens up to <|end|>; None if the model begins a new turn instead."""
        for token in stream(self.model, ids, cfg, stop_ids=(self.tok.end_id,)):
            if token in (self.tok.user_id, self.tok.assistant_id):
                yield None
                return
            yield token

    def chat(self, messages: list[dict], **overrides) -> str:
        """The assistant's next reply to a conversation."""
        return self.respond(messages, **overrides).text

    def reply(self, text: str, **overrides) -> str:
        """A one-turn reply to `text`."""
        return self.chat([{"role": "user", "content": text}], **overrides)


def interactive(guppy: Guppy, prompt: str | None = None, show_topic: bool = False) -> None:
    """`guppy chat`: stream replies, keep history, /reset to forget, Ctrl-C or Ctrl-D to quit."""
    if prompt is not None:
        message = [{"role": "user", "content": normalize_user_text(prompt) or "..."}]
        finish(guppy.stream_reply(message, show_topic=show_topic), show=_print)
        print()
        return
    who = guppy.name.lower()
    print(f"chatting with {who} (/reset forgets the conversation; Ctrl-D or Ctrl-C quits)")
    history: list[dict] = []
    while True:
        try:
            text = normalize_user_text(input("you> "))
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not text:
            continue
        if text == "/reset":
            history = []
            print("(forgotten)")
            continue
        history.append({"role": "user", "content": text})
        print(f"{who}> ", end="", flush=True)
        try:
            reply = finish(guppy.stream_reply(history, show_topic=show_topic), show=_print)
        except KeyboardInterrupt:
            print()
            return
        print()
        history.append(reply.message())
        sys.stdout.flush()


def _print(piece: str) -> None:
    print(piece, end="", flush=True)

