"""Talking to a trained model: the `Guppy` class (for notebooks and the server) and the
interactive `guppy chat` loop.

    from guppylm import Guppy
    g = Guppy.load("runs/guppy")
    g.reply("hi guppy")                       # one turn
    g.chat([{"role": "user", "content": "hi"}, ...])   # with history
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterator
from dataclasses import replace
from pathlib import Path

from safetensors.torch import load_file

from guppylm.chat_format import normalize_user_text
from guppylm.checkpoint import read_config
from guppylm.errors import GuppyError
from guppylm.generate import SamplingConfig, stream
from guppylm.model import GPT, GPTConfig
from guppylm.tokenizer import Tokenizer, encode_chat

RUN_FILES = ("config.json", "tokenizer.json", "model.safetensors")


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

    def stream_reply(self, messages: list[dict], **overrides) -> Iterator[str]:
        """Yield the reply as text pieces, as the tokens are generated."""
        cfg = replace(self.sampling, **overrides)
        new: list[int] = []
        shown = ""
        for token in self._tokens(messages, cfg):
            new.append(token)
            text = self.tok.decode(new)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                yield text[len(shown):]
                shown = text

    def respond(self, messages: list[dict], **overrides) -> tuple[str, bool]:
        """(reply, ended): ended is False when the reply ran into the length limit or the
        model began another turn instead of ending its own (evaluation counts both)."""
        tokens: list[int] = []
        generator = self._tokens(messages, replace(self.sampling, **overrides))
        while True:
            try:
                tokens.append(next(generator))
            except StopIteration as stop:  # the generator's return value: did it end?
                return self.tok.decode(tokens).strip(), stop.value

    def _tokens(self, messages: list[dict], cfg: SamplingConfig) -> Generator[int, None, bool]:
        """Yield the reply's tokens; return True if the model ended its turn itself."""
        ids = self.prompt_ids(messages, cfg.max_new_tokens)
        limit = min(cfg.max_new_tokens, self.model.cfg.context - len(ids))
        count = 0
        for token in stream(self.model, ids, cfg, stop_ids=(self.tok.end_id,)):
            if token in (self.tok.user_id, self.tok.assistant_id):
                return False  # the model tried to start a new turn itself
            count += 1
            yield token
        return count < limit  # fewer than the limit: it stopped at <|end|>

    def chat(self, messages: list[dict], **overrides) -> str:
        """The assistant's next reply to a conversation."""
        return "".join(self.stream_reply(messages, **overrides)).strip()

    def reply(self, text: str, **overrides) -> str:
        """A one-turn reply to `text`."""
        return self.chat([{"role": "user", "content": text}], **overrides)


def interactive(guppy: Guppy, prompt: str | None = None) -> None:
    """`guppy chat`: stream replies, keep history, /reset to forget, Ctrl-C or Ctrl-D to quit."""
    if prompt is not None:
        print(guppy.reply(normalize_user_text(prompt) or "..."))
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
        pieces = []
        try:
            for piece in guppy.stream_reply(history):
                pieces.append(piece)
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            print()
            return
        print()
        history.append({"role": "assistant", "content": "".join(pieces).strip()})
        sys.stdout.flush()

