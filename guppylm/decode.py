"""Batched decoding: many conversations generated together, one forward pass per step.

A server answering several people at once could run `Guppy.stream` for each in turn. But a
step of a small model is mostly fixed cost (Python, launching each operation), not
arithmetic: a step for 32 sequences costs little more than a step for one. So every request
in flight advances together:

    step: for each active sequence, choose its next token from its logits, by the rules of
          `generate.stream` and `Guppy.stream`, with the sequence's own seeded generator
       -> one forward pass for all the sequences that go on -> new logits for each

A sequence joins between steps (its prompt is read alone, "prefill", filling its slot of
the KV cache) and leaves when it finishes or is cancelled. A sequence's tokens are the same
whatever else is in the batch (tests/test_serve.py checks it): its logits are computed bit
for bit as if it were alone (`forward_step`), and its token is drawn from its own
generator. `Guppy.stream` is this decoder with a batch of one, so `guppy chat`, `guppy eval`
and the server give one reply for one seed.

A sequence may also ask for the probabilities behind its tokens (`top_logprobs`): its
chunks are then `ScoredChunk`s, which carry the log-probability of each reply token and of
the likeliest alternatives, and of the topic among the topics. They are read off the logits
the step computes anyway, before any token is chosen, so the tokens are the same, bit for
bit, whether they are asked for or not.

`DecodeLoop` runs a `BatchDecoder` in a background thread, fed by a bounded queue: the
server's side of it (serve.py) only submits, cancels and receives chunks.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from guppylm.chat_format import SENTENCE_END, first_sentence
from guppylm.generate import SamplingConfig, choose_topic, pick_tokens
from guppylm.model import GPT
from guppylm.tokenizer import Tokenizer

log = logging.getLogger(__name__)

OPENING_TRIES = 3  # draws of a reply whose opening sentence repeats the previous reply's
ROWS = 8  # every matrix product of a step multiplies blocks of this many rows (see _rows)
SPAN = 64  # attention reads the caches this many positions at a time (see forward_step)


@dataclass
class Chunk:
    """A piece of a streamed reply."""

    text: str = ""  # new reply text
    topic: str | None = None  # set on the chunk that names the topic
    finish: str | None = None  # on the last chunk: "stop" (end of turn) or "length"


@dataclass
class TokenScore:
    """A token's log-probability and the likeliest tokens of the same distribution."""

    id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, log-probability), likeliest first


@dataclass
class ScoredChunk(Chunk):
    """A chunk of a sequence that asked for probabilities: the scores of the reply tokens
    whose text it completes, and, on the chunk naming the topic, the topic's score among
    the topics only (the distribution `choose_topic` chooses from)."""

    scores: list[TokenScore] = field(default_factory=list)
    topic_score: TokenScore | None = None


def score(logprobs: torch.Tensor, token: int, n: int,
          ids: torch.Tensor | None = None) -> TokenScore:
    """`token`'s score from log-probabilities over `ids` (default: the whole vocabulary),
    with the `n` likeliest."""
    ids = torch.arange(len(logprobs)) if ids is None else ids
    top, at = logprobs.topk(min(n, len(logprobs)))
    chosen = int((ids == token).nonzero()[0, 0])
    return TokenScore(token, float(logprobs[chosen]),
                      [(int(ids[i]), float(lp)) for lp, i in zip(top, at, strict=True)])


@dataclass(eq=False)
class Sequence:
    """One reply being generated: its prompt, its sampling settings and its state.

    `emit` receives the reply's chunks, as `Guppy.stream` yields them, from the decoding
    thread. `stop`: strings that end the reply where they first appear (not included).
    """

    prompt: list[int]
    cfg: SamplingConfig
    stop: tuple[str, ...] = ()
    emit: Callable[[Chunk], None] = lambda chunk: None
    avoid: str = ""  # an opening sentence not to repeat: chat_format.opening_to_avoid
    top_logprobs: int | None = None  # alternatives to score per token; None: no scores
    tokens: list[int] = field(default_factory=list)  # every token chosen: topic and end too
    finish: str | None = None  # "stop" or "length" once finished, "error" if decoding failed
    cancelled: bool = False  # set by anyone; the sequence leaves at the next step
    # decoding state, set when the sequence joins a BatchDecoder
    limit: int = 0
    logits: torch.Tensor | None = None
    slot: int = -1  # its place in the decoder's KVCache
    generator: torch.Generator | None = None
    reply: list[int] = field(default_factory=list)  # the reply's tokens, for the text
    shown: str = ""  # the text emitted so far
    # the opening rule of Guppy.stream: chunks held back until the opening sentence is known
    held: list[Chunk] | None = None  # None: nothing held back
    tries: int = 0
    seen: str = ""  # the text when the opening was last looked for
    first_logits: torch.Tensor | None = None  # after the prompt, to draw the reply again
    unsent: list[TokenScore] = field(default_factory=list)  # scores of tokens not yet shown


class KVCache:
    """The keys and values of many sequences, a slot each: for every layer, a (slots, heads,
    context, head size) tensor that a step writes into in place. The active sequences hold
    slots 0, 1, 2, ... so that a step reads its batch's caches as one slice, without a copy.
    """

    def __init__(self, model: GPT, slots: int = 1):
        cfg = model.cfg
        self.shape = (cfg.n_layer, slots, cfg.n_head, cfg.context, cfg.d_model // cfg.n_head)
        self.k = torch.zeros(self.shape, device=model.wte.weight.device)
        self.v = torch.zeros_like(self.k)

    def make_room(self, slots: int) -> None:
        """At least `slots` slots: double the cache until they fit (rarely: it is kept)."""
        while self.k.shape[1] < slots:
            self.k, self.v = (torch.cat([t, torch.zeros_like(t)], dim=1) for t in (self.k, self.v))

    def fill(self, slot: int, caches: list[dict]) -> None:
        """Copy a prompt's keys and values, as `GPT.forward` caches them, into `slot`."""
        for layer, cache in enumerate(caches):
            n = cache["k"].shape[2]
            self.k[layer, slot, :, :n] = cache["k"][0]
            self.v[layer, slot, :, :n] = cache["v"][0]

    def move(self, source: int, to: int) -> None:
        self.k[:, to], self.v[:, to] = self.k[:, source], self.v[:, source]


class BatchDecoder:
    """Active sequences and the step that advances them all by one token."""

    def __init__(self, model: GPT, tok: Tokenizer):
        self.model, self.tok = model.eval(), tok
        self.topic_ids = torch.tensor(tuple(tok.topics), dtype=torch.long)  # as Guppy.stream
        self.active: list[Sequence] = []  # in slot order: active[i] holds slot i
        self.cache = KVCache(model)

    @torch.inference_mode()
    def add(self, seq: Sequence) -> None:
        """Read the prompt (prefill) and make the sequence one of the active ones."""
        context = self.model.cfg.context
        if not 0 < len(seq.prompt) < context:
            raise ValueError(f"a prompt of {len(seq.prompt)} tokens leaves no room in the "
                             f"context of {context}; trim it with Guppy.prompt_ids")
        seq.limit = min(seq.cfg.max_new_tokens, context - len(seq.prompt))
        # its own generator, so its randomness never depends on the other requests
        seq.generator = torch.Generator(device="cpu")
        if seq.cfg.seed is None:
            seq.generator.seed()  # a fresh random seed
        else:
            seq.generator.manual_seed(seq.cfg.seed)
        # the prompt is read by the model itself, alone, exactly as generate.stream reads it
        caches: list[dict] = [{} for _ in self.model.h]
        device = self.model.wte.weight.device
        seq.logits = self.model(torch.tensor([seq.prompt], device=device),
                                caches=caches)[0, -1].cpu()
        if seq.avoid and seq.cfg.temperature > 0:  # greedy never redraws: it would repeat
            seq.first_logits, seq.held = seq.logits.clone(), []
        seq.slot = len(self.active)
        self.cache.make_room(seq.slot + 1)
        self.cache.fill(seq.slot, caches)
        self.active.append(seq)

    @torch.inference_mode()
    def step(self) -> list[tuple[Sequence, Chunk]]:
        """Choose the next token of every active sequence, then run one forward pass for
        those that go on. Returns the chunks to send, in order; finished and cancelled
        sequences leave."""
        out: list[tuple[Sequence, Chunk]] = []
        live = [seq for seq in self.active if not seq.cancelled]
        for seq, token in zip(live, self._choose(live), strict=True):
            out += [(seq, chunk) for chunk in self._next_token(seq, token)]
        self._keep([seq for seq in self.active if seq.finish is None and not seq.cancelled])
        going_on = [s for s in self.active if s.tokens]  # a reply drawn again has its logits
        if going_on:
            logits = forward_step(self.model, self.cache, [s.slot for s in going_on],
                                  [s.tokens[-1] for s in going_on],
                                  [len(s.prompt) + len(s.tokens) - 1 for s in going_on]).cpu()
            for seq, row in zip(going_on, logits, strict=True):
                seq.logits = row
        return out

    def drop(self, seqs: list[Sequence]) -> None:
        """Stop decoding `seqs` at once (a step that failed)."""
        self._keep([seq for seq in self.active if seq not in seqs])

    def _keep(self, going_on: list[Sequence]) -> None:
        """Make `going_on` the active sequences, in slots 0, 1, 2, ...: each one beyond
        them moves into a slot that a leaving sequence freed."""
        n = len(going_on)
        taken = {seq.slot for seq in going_on}
        free = iter(slot for slot in range(n) if slot not in taken)
        for seq in going_on:
            if seq.slot >= n:
                slot = next(free)
                self.cache.move(seq.slot, slot)
                seq.slot = slot
        self.active = sorted(going_on, key=lambda seq: seq.slot)

    def _choose(self, seqs: list[Sequence]) -> list[int]:
        """The next token of each sequence, by generate.stream's rules: a reply's first token
        may name a topic; after it no topic can be drawn. Sequences that sample alike draw
        together (`pick_tokens`), each from its own generator."""
        chosen: dict[int, int] = {}
        alike: dict[tuple, list[int]] = {}
        for i, seq in enumerate(seqs):
            topic = None if seq.tokens else choose_topic(seq.logits, self.topic_ids, seq.cfg,
                                                         seq.generator)
            if topic is not None:
                chosen[i] = topic
            else:
                alike.setdefault((seq.cfg.temperature, seq.cfg.top_k, seq.cfg.top_p), []).append(i)
        for rows in alike.values():
            cfg = seqs[rows[0]].cfg
            logits = torch.stack([seqs[i].logits for i in rows])
            logits[:, self.topic_ids] = float("-inf")  # a topic comes first or not at all
            tokens = pick_tokens(logits, cfg, [seqs[i].generator for i in rows])
            chosen.update(zip(rows, tokens, strict=True))
        return [chosen[i] for i in range(len(seqs))]

    def _next_token(self, seq: Sequence, token: int) -> list[Chunk]:
        """What Guppy.stream yields for `seq`'s next token (plus the handling of stop
        strings)."""
        tok = self.tok
        # the model's distribution, unmasked, for the probabilities a request asked for
        logprobs = None if seq.top_logprobs is None else torch.log_softmax(seq.logits.float(), -1)
        seq.tokens.append(token)
        chunks: list[Chunk] = []
        if token == tok.end_id:
            return self._finish(seq, "stop")
        if token in (tok.user_id, tok.assistant_id):
            return self._finish(seq, "length")  # it began another turn: not a proper end
        if token in tok.topics:
            among = None if logprobs is None else score(
                torch.log_softmax(logprobs[self.topic_ids], -1), token, seq.top_logprobs,
                self.topic_ids)
            chunks.append(self._chunk(seq, topic=tok.topics[token], topic_score=among))
        else:
            if logprobs is not None:
                seq.unsent.append(score(logprobs, token, seq.top_logprobs))
            seq.reply.append(token)
            text = tok.decode(seq.reply)
            cut = _first_stop(text, seq.stop)
            if cut is not None:  # a stop string: the reply ends before it
                return self._finish(seq, "stop", text[:cut])
            safe = text[:len(text) - _stop_prefix(text, seq.stop)]
            if len(safe) > len(seq.shown) and not safe.endswith("\ufffd"):  # whole characters
                chunks.append(self._chunk(seq, text=safe[len(seq.shown):]))
                seq.shown = safe
        if len(seq.tokens) == seq.limit:
            if seq.held is not None:  # the finish decides the opening: hold these too
                seq.held += chunks
                chunks = []
            return chunks + self._finish(seq, "length")
        return self._opening(seq, chunks, self.tok.decode(seq.reply), finished=False)

    def _finish(self, seq: Sequence, finish: str, text: str | None = None) -> list[Chunk]:
        """The last chunk: the text not sent yet (all of the reply's, as Guppy.stream
        ends, unless `text` says where it ends)."""
        text = self.tok.decode(seq.reply) if text is None else text
        last = self._chunk(seq, text=text[len(seq.shown):], finish=finish)
        chunks = self._opening(seq, [last], text, finished=True)
        if seq.tokens:  # not drawn again: finished
            seq.finish = finish
            seq.logits = seq.first_logits = None  # its slot is freed at the end of the step
        return chunks

    @staticmethod
    def _chunk(seq: Sequence, topic_score: TokenScore | None = None, **fields) -> Chunk:
        """A Chunk; for a sequence that asked for scores, a ScoredChunk that carries the
        scores of the tokens not sent yet."""
        if seq.top_logprobs is None:
            return Chunk(**fields)
        scores, seq.unsent = seq.unsent, []
        return ScoredChunk(**fields, scores=scores, topic_score=topic_score)

    def _opening(self, seq: Sequence, chunks: list[Chunk], text: str,
                 finished: bool) -> list[Chunk]:
        """Guppy.stream's opening rule: hold the chunks back until the reply's opening
        sentence is known; if it repeats `seq.avoid`, draw the reply again (the same tries,
        decided at the same tokens, with the same generator: the same reply as alone)."""
        if seq.held is None:
            return chunks
        seq.held += chunks
        grew, seq.seen = len(text) > len(seq.seen), text
        known = finished or (grew and not text.endswith("\ufffd") and SENTENCE_END.search(text))
        if not known:
            return []
        seq.tries += 1
        if first_sentence(text) == seq.avoid:
            self._draw_again(seq)
            return []
        held, seq.held = seq.held, None
        return held

    def _draw_again(self, seq: Sequence) -> None:
        """Forget the reply so far: back to the logits after the prompt. (Its cache beyond
        the prompt is overwritten as the new reply is read, and never read before.)"""
        seq.tokens, seq.reply, seq.shown, seq.seen, seq.unsent = [], [], "", "", []
        seq.logits = seq.first_logits.clone()
        seq.held = [] if seq.tries < OPENING_TRIES - 1 else None


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string in `text` begins, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _stop_prefix(text: str, stops: tuple[str, ...]) -> int:
    """How many last characters of `text` could begin a stop string: held back until the
    next tokens say whether the stop string follows."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])),
               default=0)


def forward_step(model: GPT, cache: KVCache, slots: list[int], tokens: list[int],
                 positions: list[int]) -> torch.Tensor:
    """Logits (B, vocab) for one new token of each of B sequences, each continuing the keys
    and values in its slot of `cache` (and adding the new token's).

    The arithmetic of `GPT.forward` with a cache, with the model's own weights, laid out for
    a batch: each operation runs once for all B rows instead of B times, which is where
    batching pays (a small model's step is mostly the fixed cost of each operation).

    Each row's result is the same, bit for bit, whatever the other rows are: that is what
    makes a seed give the same reply whatever else is decoded with it. A matrix product of a
    whole batch would not (its sums are ordered by the batch's size), so `_rows` multiplies
    blocks of ROWS rows. Attention is written out rather than calling
    `F.scaled_dot_product_attention`, whose sums depend on the batch when it uses several
    threads: every sequence attends over the same SPAN-rounded number of cache positions, the
    ones beyond its own length masked out (they add exact zeros).
    """
    device = model.wte.weight.device
    B, C = len(tokens), model.cfg.d_model
    pos = torch.tensor(positions, device=device)
    x = model.wte(torch.tensor(tokens, device=device)) + model.wpe(pos)  # (B, C)
    span = -(-(max(positions) + 1) // SPAN) * SPAN  # positions to read: a multiple of SPAN
    unseen = (torch.arange(span, device=device) > pos[:, None])[:, None, None, :]  # B,1,1,T
    rows = torch.tensor(slots, device=device)
    in_order = slots == list(range(B))  # the usual case: read the slots as a slice
    for layer, block in enumerate(model.h):
        H = block.attn.n_head
        q, k, v = _rows(block.attn.c_attn, block.ln_1(x)).split(C, dim=1)
        q, k, v = (t.view(B, H, C // H) for t in (q, k, v))  # a row per sequence and head
        keys, values = cache.k[layer], cache.v[layer]  # (slots, H, context, head size)
        keys[rows, :, pos], values[rows, :, pos] = k, v  # the new token's, in place
        keys, values = ((t[:B] if in_order else t[rows])[:, :, :span] for t in (keys, values))
        att = (q.unsqueeze(2) @ keys.transpose(-2, -1)) * (C // H) ** -0.5  # (B, H, 1, T)
        att = att.masked_fill(unseen, float("-inf")).softmax(dim=-1)
        y = (att @ values).view(B, C)  # (B, H, 1, head size): the heads side by side
        x = x + _rows(block.attn.c_proj, y)
        mlp = block.mlp
        x = x + _rows(mlp.c_proj, F.gelu(_rows(mlp.c_fc, block.ln_2(x)), approximate="tanh"))
    return _rows(model.lm_head, model.ln_f(x))


def _rows(linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`linear(x)` for a batch of rows, each row's result independent of the others.

    Why not just `linear(x)`: a matrix multiplication sums in an order that the math
    library picks by the matrices' shape, so a row's result would change in its last bits
    with the size of the batch around it, and a sampled token can flip where two are nearly
    tied. Here the rows are padded to a multiple of ROWS and multiplied ROWS at a time (one
    batched call against the same weights, expanded, not copied): every product has the
    same shape whatever the batch, and so sums each row the same way.
    """
    B, n = x.shape[0], -(-x.shape[0] // ROWS)
    blocks = F.pad(x, (0, 0, 0, n * ROWS - B)).view(n, ROWS, -1)
    w = linear.weight.t().expand(n, *linear.weight.t().shape)  # (n, in, out), a view
    if linear.bias is None:
        out = torch.bmm(blocks, w)
    else:
        out = torch.baddbmm(linear.bias.expand(n, 1, -1), blocks, w)
    return out.view(n * ROWS, -1)[:B]


class Full(Exception):
    """The decode loop holds as many sequences as it may: try again later."""


class DecodeLoop:
    """A `BatchDecoder` in a background thread, fed by a bounded queue.

    At most `max_batch` sequences are decoded together; up to `max_waiting` more wait for a
    place. `submit` beyond that raises `Full` at once. New sequences join between steps, and
    a cancelled one leaves at the next step. Torch releases the GIL while it computes, so
    the thread that serves requests keeps running.
    """

    def __init__(self, model: GPT, tok: Tokenizer, max_batch: int = 32, max_waiting: int = 64):
        if max_batch < 1 or max_waiting < 0:
            raise ValueError("max_batch must be at least 1 and max_waiting 0 or more")
        self.decoder = BatchDecoder(model, tok)
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self._waiting: deque[Sequence] = deque()
        self._in_flight: set[Sequence] = set()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="guppy-decode", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def submit(self, seq: Sequence) -> None:
        """Queue `seq` for decoding; raise `Full` when the queue is full."""
        with self._wake:
            if len(self._in_flight) >= self.max_batch + self.max_waiting:
                raise Full
            self._in_flight.add(seq)
            self._waiting.append(seq)
            self._wake.notify()

    def cancel(self, seq: Sequence) -> None:
        """Stop generating `seq`: it leaves at the next step, and sends nothing more."""
        seq.cancelled = True
        with self._wake:
            if seq in self._waiting:  # not started yet: its place is free at once
                self._waiting.remove(seq)
                self._in_flight.discard(seq)
            self._wake.notify()

    def counts(self) -> dict[str, int]:
        with self._wake:
            waiting = len(self._waiting)
            return {"active": len(self._in_flight) - waiting, "waiting": waiting,
                    "max_batch": self.max_batch, "max_waiting": self.max_waiting}

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._stopping or self._waiting or self.decoder.active):
                    self._wake.wait()
                if self._stopping:
                    break
                joining = []
                while self._waiting and len(self.decoder.active) + len(joining) < self.max_batch:
                    joining.append(self._waiting.popleft())
            for seq in joining:
                if not seq.cancelled:
                    self._guarded(lambda seq=seq: self.decoder.add(seq), [seq])
            self._guarded(self._step, list(self.decoder.active))
            with self._wake:
                self._in_flight -= {s for s in self._in_flight
                                    if s.finish is not None or s.cancelled}
        with self._wake:  # stopped with replies unfinished: end them
            for seq in self._in_flight:
                if seq.finish is None and not seq.cancelled:
                    seq.finish = "error"
                    seq.emit(Chunk(finish="error"))
            self._in_flight.clear()
            self._waiting.clear()
            self.decoder.active = []

    def _step(self) -> None:
        for seq, chunk in self.decoder.step():
            seq.emit(chunk)

    def _guarded(self, work: Callable[[], None], seqs: list[Sequence]) -> None:
        """Run `work`; if it fails, end `seqs` with finish "error" and keep serving."""
        try:
            work()
        except Exception:
            log.exception("decoding failed; ending %d sequence(s) with an error", len(seqs))
            self.decoder.drop(seqs)
            for seq in seqs:
                if seq.finish is None:
                    seq.finish = "error"
                    seq.emit(Chunk(finish="error"))


def sampling_for(base: SamplingConfig, **overrides) -> SamplingConfig:
    """`base` with the fields in `overrides` that are not None replaced."""
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
