"""Sampling: turn the model's next-token logits into text, one token at a time.

The KV cache makes this fast: the prompt is read once ("prefill"), and each new token
then costs one position of work instead of re-reading the whole sequence.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from guppylm.errors import GuppyError
from guppylm.model import GPT


@dataclass
class SamplingConfig:
    temperature: float = 0.7  # < 1 sharpens the distribution, > 1 flattens it; 0 = greedy
    top_k: int = 40  # sample only among the k likeliest tokens (0 = no limit)
    top_p: float = 0.9  # ... and only among the smallest set holding this much probability
    max_new_tokens: int = 80
    seed: int | None = None
    # for the topic a chat model names before its reply (chat_format.py): 0 = the likeliest.
    # Variety belongs in the words; choosing a less likely topic is just answering off topic.
    topic_temperature: float = 0.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise GuppyError(f"--temperature {self.temperature}: must be 0 or more")
        if self.topic_temperature < 0:
            raise GuppyError(f"--topic-temperature {self.topic_temperature}: must be 0 or more")
        if self.top_k < 0:
            raise GuppyError(f"--top-k {self.top_k}: must be 0 (no limit) or more")
        if not 0 < self.top_p <= 1:
            raise GuppyError(f"--top-p {self.top_p}: must be above 0 and at most 1")
        if self.max_new_tokens < 1:
            raise GuppyError(f"--max-new-tokens {self.max_new_tokens}: must be at least 1")


def pick_token(logits: torch.Tensor, cfg: SamplingConfig,
               generator: torch.Generator | None = None) -> int:
    """Choose the next token from a 1-D tensor of logits: the `top_k` likeliest, then the
    fewest of them that hold `top_p` of the probability, then one drawn at `temperature`."""
    return pick_tokens(logits[None], cfg, [generator])[0]


def pick_tokens(logits: torch.Tensor, cfg: SamplingConfig,
                generators: list[torch.Generator | None]) -> list[int]:
    """`pick_token` for each row of (B, vocab) logits, row b drawing from `generators[b]`:
    the same token for a row whatever the other rows are.

    Only the k candidates are sorted and drawn from, not the whole vocabulary: ten times
    faster than masking all of it, and sampling is a large share of a small model's step.
    """
    if cfg.temperature <= 0:
        return logits.argmax(dim=-1).tolist()
    k = cfg.top_k if 0 < cfg.top_k < logits.shape[-1] else logits.shape[-1]
    top, ids = torch.topk(logits.float(), k)  # (B, k), the likeliest first
    probs = torch.softmax(top / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        # drop a token once the likelier tokens before it already hold top_p of the mass
        probs[probs.cumsum(-1) - probs > cfg.top_p] = 0.0
    # draw: a uniform number per row, from the row's own generator, picks the first token
    # whose cumulative probability reaches it (a token cut above takes up no room)
    cumulative = probs.cumsum(-1)
    u = torch.cat([torch.rand(1, generator=g) for g in generators]) * cumulative[:, -1]
    picked = torch.searchsorted(cumulative, u[:, None]).clamp(max=k - 1)
    return ids.gather(1, picked).squeeze(1).tolist()


def choose_topic(logits: torch.Tensor, topic_ids: torch.Tensor, cfg: SamplingConfig,
                 generator: torch.Generator | None = None) -> int | None:
    """The topic token to begin a reply with, or None when the likeliest first token is no
    topic (a model trained without topics). The topic is chosen among topic tokens only, at
    `cfg.topic_temperature`: 0, the default, takes the likeliest."""
    if len(topic_ids) == 0 or int(logits.argmax()) not in topic_ids:
        return None
    topic_cfg = SamplingConfig(temperature=cfg.topic_temperature, top_k=0, top_p=1.0)
    return int(topic_ids[pick_token(logits[topic_ids], topic_cfg, generator)])


def new_generator(seed: int | None) -> torch.Generator | None:
    """A random number generator seeded with `seed`; None (torch's global one) for no seed."""
    return None if seed is None else torch.Generator(device="cpu").manual_seed(seed)


@torch.inference_mode()
def stream(model: GPT, prompt_ids: list[int], cfg: SamplingConfig,
           stop_ids: tuple[int, ...] = (), topic_ids: tuple[int, ...] = (),
           generator: torch.Generator | None = None) -> Iterator[int]:
    """Yield new token ids one by one; stop at a stop id (not yielded) or a length limit.

    A reply may begin with a topic token (`topic_ids`, chat_format.py): it is chosen by
    `choose_topic`, and topic tokens cannot be sampled after it. Random draws come from
    `generator`, or from a new one seeded with `cfg.seed`.
    """
    model.eval()
    device = next(model.parameters()).device
    if generator is None:
        generator = new_generator(cfg.seed)
    room = model.cfg.context - len(prompt_ids)
    if room <= 0:
        raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room in the context")
    topics = torch.tensor(topic_ids, dtype=torch.long)
    caches: list[dict] = [{} for _ in model.h]
    logits = model(torch.tensor([prompt_ids], device=device), caches=caches)[0, -1].cpu()
    limit = min(cfg.max_new_tokens, room)
    for i in range(limit):
        token = choose_topic(logits, topics, cfg, generator) if i == 0 else None
        if token is None:
            logits[topics] = float("-inf")  # a topic comes first or not at all
            token = pick_token(logits, cfg, generator)
        if token in stop_ids:
            return
        yield token
        if i + 1 < limit:
            logits = model(torch.tensor([[token]], device=device), caches=caches)[0, -1].cpu()


@torch.inference_mode()
def stream_without_cache(model: GPT, prompt_ids: list[int], cfg: SamplingConfig,
                         stop_ids: tuple[int, ...] = ()) -> Iterator[int]:
    """The same tokens as `stream`, recomputing the whole sequence at every step.

    Kept as the reference that the cache is tested and benchmarked against.
    """
    model.eval()
    device = next(model.parameters()).device
    generator = new_generator(cfg.seed)
    ids = list(prompt_ids)
    for _ in range(min(cfg.max_new_tokens, model.cfg.context - len(prompt_ids))):
        logits = model(torch.tensor([ids], device=device))[0, -1]
        token = pick_token(logits.cpu(), cfg, generator)
        if token in stop_ids:
            return
        yield token
        ids.append(token)
