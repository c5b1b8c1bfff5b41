"""Batches for training: conversations of similar length together, so that almost no
compute is spent on padding, in an order that a resumed run can reproduce exactly."""

from __future__ import annotations

import random

import torch

from guppylm.tokenizer import Tokenizer, encode_chats

IGNORE = -100  # target value for tokens that carry no loss


def encode_examples(tok: Tokenizer, conversations: list[dict], context: int) -> list[tuple]:
    """(input ids, target ids) per conversation; targets are IGNORE outside assistant turns."""
    examples = []
    for ids, mask in encode_chats(tok, conversations):
        ids, mask = ids[: context + 1], mask[: context + 1]
        targets = [t if m else IGNORE for t, m in zip(ids[1:], mask[1:], strict=True)]
        examples.append((ids[:-1], targets))
    return examples


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


def collate(examples: list[tuple], batch: list[int], pad_id: int) -> tuple[torch.Tensor, ...]:
    T = max(len(examples[i][0]) for i in batch)
    x = torch.full((len(batch), T), pad_id, dtype=torch.long)
    y = torch.full((len(batch), T), IGNORE, dtype=torch.long)
    for row, i in enumerate(batch):
        ids, targets = examples[i]
        x[row, : len(ids)] = torch.tensor(ids)
        y[row, : len(targets)] = torch.tensor(targets)
    return x, y


def topic_end_ids(tok: Tokenizer) -> torch.Tensor:
    """Ids of the tokens that hold the "|" closing a topic name ("food | i eat flakes.")."""
    specials = {tok.end_id, tok.user_id, tok.assistant_id}
    return torch.tensor(sorted(i for t, i in tok.hf.get_vocab().items()
                               if "|" in t and i not in specials))


def topic_weights(x: torch.Tensor, y: torch.Tensor, assistant_id: int, end_ids: torch.Tensor,
                  weight: float) -> torch.Tensor:
    """Loss weights per target: `weight` for the tokens naming the topic, 1 for the rest.

    A topic's tokens run from the one after <|assistant|> to the "|" that closes the name:
    at a position, more assistant turns have begun than topic names have closed before it.
    """
    begun = (x == assistant_id).long().cumsum(1)
    closes = torch.isin(y, end_ids).long()
    naming = begun > closes.cumsum(1) - closes
    return 1.0 + (weight - 1.0) * naming.float()


class BatchStream:
    """Step `s` on rank `r` of `w` takes batch `s*w + r` of an endless, epoch-by-epoch order.

    The order of each epoch depends only on the seed and the epoch number, so a resumed
    run sees exactly the batches the interrupted one would have seen.
    """

    def __init__(self, examples: list[tuple], batch_tokens: int, seed: int, pad_id: int):
        self.examples, self.batch_tokens, self.seed = examples, batch_tokens, seed
        self.pad_id = pad_id
        self.per_epoch = len(make_batches(examples, batch_tokens, seed))
        self._epoch, self._batches = -1, []

    def get(self, step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, ...]:
        """(inputs, targets, number of real, unpadded tokens) for this step and rank."""
        index = step * world + rank
        epoch = index // self.per_epoch
        if epoch != self._epoch:
            self._epoch = epoch
            self._batches = make_batches(self.examples, self.batch_tokens, self.seed + epoch)
        batch = self._batches[index % self.per_epoch]
        real = sum(len(self.examples[i][0]) for i in batch)
        return (*collate(self.examples, batch, self.pad_id), real)
