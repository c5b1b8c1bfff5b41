"""Batches for training: conversations of similar length together, so that almost no
compute is spent on padding, in an order that a resumed run can reproduce exactly."""

from __future__ import annotations

import random

import torch

from guppylm.chat_format import TOPIC, encode_chats
from guppylm.model import IGNORE
from guppylm.tokenizer import Tokenizer


def encode_examples(tok: Tokenizer, conversations: list[dict], context: int,
                    drop_history_topics: float = 0.0, seed: int = 0) -> list[tuple]:
    """(input ids, target ids, target is a topic) per conversation, cut to the context.

    Targets are IGNORE outside assistant turns. With `drop_history_topics`, each assistant
    turn but the last loses its topic at that rate: plain chat clients send the history
    back as `content` only, and the model should answer such a history just as well.
    """
    if drop_history_topics:
        rng = random.Random(seed)
        conversations = [_drop_history_topics(c, drop_history_topics, rng) for c in conversations]
    examples = []
    for ids, mask in encode_chats(tok, conversations):
        ids, mask = ids[: context + 1], mask[: context + 1]
        targets = [t if m else IGNORE for t, m in zip(ids[1:], mask[1:], strict=True)]
        examples.append((ids[:-1], targets, [m == TOPIC for m in mask[1:]]))
    return examples


def _drop_history_topics(conv: dict, rate: float, rng: random.Random) -> dict:
    messages = list(conv["messages"])
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    for i, m in enumerate(messages[:last]):
        if m["role"] == "assistant" and "topic" in m and rng.random() < rate:
            messages[i] = {"role": "assistant", "content": m["content"]}
    return {**conv, "messages": messages}


def make_batches(examples: list[tuple], batch_tokens: int, seed: int) -> list[list[int]]:
    """Group examples of similar length into batches of about `batch_tokens` tokens.

    Sorting by length (ties in a seeded random order) keeps padding near zero; the batch
    order is then shuffled so training does not see short conversations first.
    """
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    order.sort(key=lambda i: len(examples[i][0]))
    batches, current = [], []
    for i in order:
        longest = len(examples[i][0])  # sorted, so the newest example is the longest
        if current and (len(current) + 1) * longest > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def collate(examples: list[tuple], batch: list[int], pad_id: int,
            topic_weight: float = 1.0) -> tuple[torch.Tensor, ...]:
    """Padded (inputs, targets, loss weights) for the examples in `batch`.

    The topic token carries the hardest decision ("what is this message about?") but is one
    token of a turn: a `topic_weight` above 1 spends more of the gradient on it.
    """
    T = max(len(examples[i][0]) for i in batch)
    x = torch.full((len(batch), T), pad_id, dtype=torch.long)
    y = torch.full((len(batch), T), IGNORE, dtype=torch.long)
    w = torch.ones((len(batch), T))
    for row, i in enumerate(batch):
        ids, targets, is_topic = examples[i]
        x[row, : len(ids)] = torch.tensor(ids)
        y[row, : len(targets)] = torch.tensor(targets)
        w[row, : len(targets)] += (topic_weight - 1.0) * torch.tensor(is_topic).float()
    return x, y, w


class BatchStream:
    """Step `s` on rank `r` of `w` takes batch `s*w + r` of an endless, epoch-by-epoch order.

    The order of each epoch depends only on the seed and the epoch number, so a resumed
    run sees exactly the batches the interrupted one would have seen. An epoch's batches
    are built when it begins and moved to `device` in one go: a GPU then never waits for
    the host to pad and copy the next batch.
    """

    def __init__(self, examples: list[tuple], batch_tokens: int, seed: int, pad_id: int,
                 topic_weight: float = 1.0, device: torch.device | str = "cpu"):
        self.examples, self.batch_tokens, self.seed = examples, batch_tokens, seed
        self.pad_id, self.topic_weight, self.device = pad_id, topic_weight, torch.device(device)
        self.per_epoch = len(make_batches(examples, batch_tokens, seed))
        self._epoch, self._batches = -1, []

    def get(self, step: int, rank: int = 0, world: int = 1) -> tuple:
        """(inputs, targets, loss weights, number of real, unpadded tokens) for this step
        and rank."""
        index = step * world + rank
        epoch = index // self.per_epoch
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, []  # the last epoch's memory, freed first
            self._batches = [self._collate(b) for b in
                             make_batches(self.examples, self.batch_tokens, self.seed + epoch)]
        return self._batches[index % self.per_epoch]

    def _collate(self, batch: list[int]) -> tuple:
        x, y, w = collate(self.examples, batch, self.pad_id, self.topic_weight)
        real = sum(len(self.examples[i][0]) for i in batch)
        return x.to(self.device), y.to(self.device), w.to(self.device), real
