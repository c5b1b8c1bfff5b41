"""Byte-level BPE tokenizer, trained with Hugging Face `tokenizers` on the training split.

Byte-level means any text (emoji, other scripts) can be encoded: unknown characters fall
back to their UTF-8 bytes. Besides the learned tokens it holds the chat format's special
tokens (chat_format.py): <|end|>, <|user|>, <|assistant|> and one <|topic:NAME|> per topic
the training data names.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from guppylm.chat_format import ASSISTANT, END, TOPIC_TOKEN, USER, topic_token
from guppylm.errors import GuppyError

MARKERS = [END, USER, ASSISTANT]
ROUND_TO = 64  # vocabulary sizes are multiples of 64: friendlier to matmul kernels


class Tokenizer:
    """A trained BPE plus the ids of the chat format's special tokens."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        # "<|end|>" typed by a user is plain text, never a marker: the template alone
        # places special tokens (chat_format.py)
        hf.encode_special_tokens = True
        self.end_id, self.user_id, self.assistant_id = (hf.token_to_id(t) for t in MARKERS)
        self.topics: dict[int, str] = {}  # topic token id -> topic name
        for token, i in hf.get_vocab(with_added_tokens=True).items():
            match = TOPIC_TOKEN.fullmatch(token)
            if match:
                self.topics[i] = match.group(1)
        self._topic_ids = {name: i for i, name in self.topics.items()}
        self.vocab_size = hf.get_vocab_size()

    def topic_id(self, name: str) -> int:
        if name not in self._topic_ids:
            raise GuppyError(f"topic '{name}': not in this tokenizer's topics; train on data "
                             "that names it, or leave the message's topic out")
        return self._topic_ids[name]

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

    def save(self, path: Path) -> None:
        self.hf.save(str(path))

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception:  # tokenizers raises a bare Exception for unreadable files
            raise GuppyError(f"{path}: not a readable tokenizer.json; "
                             "retrain with `guppy train`") from None


def train_tokenizer(texts: list[str], vocab_size: int = 4096,
                    topics: list[str] = ()) -> Tokenizer:
    """Train byte-level BPE on `texts`, never larger than the data supports.

    The inspiring project asked for 4,096 tokens, learned 2,386, and carried 1,710 embedding
    rows that training never touched. Two things make rows dead: BPE running out of merges,
    and merges that only ever serve as steps toward longer tokens (" wigg" on the way to
    " wiggle") so that encoded text never contains them. So we train, count the tokens the
    training text never uses, and train again smaller until at most 10% are unused. The 256
    byte tokens are kept whatever their use: they encode any character at chat time.
    Sizes are multiples of 64. `topics` get a special token each (chat_format.py).
    """
    specials = MARKERS + [_topic_token_checked(name) for name in topics]
    smallest = _round(256 + len(specials)) + ROUND_TO
    if vocab_size < smallest:
        raise GuppyError(f"--vocab-size {vocab_size}: too small; byte-level BPE needs at least "
                         f"{smallest}")
    target = _round(vocab_size)
    for _ in range(MAX_ROUNDS):
        tok = _train_bpe(texts, target, specials)
        size = tok.get_vocab_size()
        unused = _unused_merges(tok, texts, len(specials))
        if size == target and unused <= MAX_UNUSED * size:
            break
        target = max(_round(smallest), _round(min(size, target) - unused))
    else:
        tok = _train_bpe(texts, target, specials)
    return Tokenizer(tok)


MAX_ROUNDS = 6
MAX_UNUSED = 0.10


def _round(n: int) -> int:
    return n - n % ROUND_TO


def _topic_token_checked(name: str) -> str:
    if not name or "<|" in name or "|>" in name or "\n" in name:
        raise GuppyError(f"topic '{name}': not a usable topic name; use words without "
                         "'<|', '|>' or line breaks")
    return topic_token(name)


def _unused_merges(tok: HFTokenizer, texts: list[str], n_special: int) -> int:
    """Learned tokens (not bytes, not special tokens) that never occur in the texts."""
    used: set[int] = set()
    for encoding in tok.encode_batch(texts, add_special_tokens=False):
        used.update(encoding.ids)
    first_merge = 256 + n_special
    return sum(1 for i in range(first_merge, tok.get_vocab_size()) if i not in used)


def _train_bpe(texts: list[str], vocab_size: int, specials: list[str]) -> HFTokenizer:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok
