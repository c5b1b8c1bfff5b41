"""Byte-level BPE tokenizer and the chat template.

The tokenizer is trained with Hugging Face `tokenizers` on the training split. Byte-level
means any text (emoji, other scripts) can be encoded: unknown characters fall back to
their UTF-8 bytes. A conversation becomes one sequence of ids:

    <|user|> hi guppy <|end|> <|assistant|> hello. the water is warm. <|end|> <|user|> ...

and `encode_chat` also says which tokens are the assistant's (its words and its <|end|>),
the only tokens that training computes loss on.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from guppylm.chat_format import normalize_user_text
from guppylm.errors import GuppyError

USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = [END, USER, ASSISTANT]
ROUND_TO = 64  # vocabulary sizes are multiples of 64: friendlier to matmul kernels


class Tokenizer:
    """A trained BPE plus the ids of the chat-turn markers."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        self.end_id, self.user_id, self.assistant_id = (hf.token_to_id(t) for t in SPECIAL_TOKENS)
        self.vocab_size = hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

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


def train_tokenizer(texts: list[str], vocab_size: int = 4096) -> Tokenizer:
    """Train byte-level BPE on `texts`, never larger than the data supports.

    BPE stops early when no pair of tokens is left to merge; the inspiring project asked for
    4,096 tokens, learned 2,386, and carried 1,710 embedding rows that were never trained.
    So we train once, see how many tokens the data supports, and if that is fewer than
    asked, train again at that size rounded down to a multiple of 64.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS) + ROUND_TO:
        raise GuppyError(f"--vocab-size {vocab_size}: too small; byte-level BPE needs at least "
                         f"{256 + len(SPECIAL_TOKENS) + ROUND_TO}")
    target = vocab_size - vocab_size % ROUND_TO
    tok = _train_bpe(texts, target)
    learned = tok.get_vocab_size()
    if learned < target:
        target = max(learned - learned % ROUND_TO, 256 + ROUND_TO)
        tok = _train_bpe(texts, target)
    return Tokenizer(tok)


def _train_bpe(texts: list[str], vocab_size: int) -> HFTokenizer:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def chat_texts(conversations: list[dict]) -> list[str]:
    """The message texts a tokenizer is trained on (user text normalised as in chat)."""
    return [_content(m) for conv in conversations for m in conv["messages"]]


def _content(message: dict) -> str:
    text = message["content"]
    return normalize_user_text(text) if message["role"] == "user" else text


def encode_chat(tok: Tokenizer, messages: list[dict],
                add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """Turn messages into ids, and mark which ids are the assistant's to predict.

    With `add_generation_prompt`, the ids end with <|assistant|>: the model's cue to reply.
    """
    contents = tok.hf.encode_batch([_content(m) for m in messages], add_special_tokens=False)
    ids, mask = _assemble(tok, messages, [c.ids for c in contents])
    if add_generation_prompt:
        ids.append(tok.assistant_id)
        mask.append(False)
    return ids, mask


def encode_chats(tok: Tokenizer, conversations: list[dict]) -> list[tuple[list[int], list[bool]]]:
    """`encode_chat` for many conversations at once (one fast batched call to the BPE)."""
    contents = tok.hf.encode_batch(chat_texts(conversations), add_special_tokens=False)
    out, k = [], 0
    for conv in conversations:
        n = len(conv["messages"])
        out.append(_assemble(tok, conv["messages"], [c.ids for c in contents[k:k + n]]))
        k += n
    return out


def _assemble(tok: Tokenizer, messages: list[dict],
              contents: list[list[int]]) -> tuple[list[int], list[bool]]:
    ids: list[int] = []
    mask: list[bool] = []
    for message, content in zip(messages, contents, strict=True):
        is_assistant = message["role"] == "assistant"
        ids += [tok.assistant_id if is_assistant else tok.user_id, *content, tok.end_id]
        mask += [False] + [is_assistant] * (len(content) + 1)
    return ids, mask


def decode_chat(tok: Tokenizer, ids: list[int]) -> list[dict]:
    """The inverse of `encode_chat`: ids back into messages."""
    messages: list[dict] = []
    role, current = None, []
    for i in ids + [tok.end_id]:
        if i in (tok.user_id, tok.assistant_id):
            role, current = ("user" if i == tok.user_id else "assistant"), []
        elif i == tok.end_id:
            if role is not None:
                messages.append({"role": role, "content": tok.decode(current)})
            role = None
        else:
            current.append(i)
    return messages

