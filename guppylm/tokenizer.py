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

from guppylm.chat_format import assistant_text, normalize_user_text, split_topic
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

    The inspiring project asked for 4,096 tokens, learned 2,386, and carried 1,710 embedding
    rows that training never touched. Two things make rows dead: BPE running out of merges,
    and merges that only ever serve as steps toward longer tokens (" wigg" on the way to
    " wiggle") so that encoded text never contains them. So we train, count the tokens the
    training text never uses, and train again smaller until at most 10% are unused. The 256
    byte tokens are kept whatever their use: they encode any character at chat time.
    Sizes are multiples of 64.
    """
    smallest = 256 + len(SPECIAL_TOKENS) + ROUND_TO
    if vocab_size < smallest:
        raise GuppyError(f"--vocab-size {vocab_size}: too small; byte-level BPE needs at least "
                         f"{smallest}")
    target = _round(vocab_size)
    for _ in range(MAX_ROUNDS):
        tok = _train_bpe(texts, target)
        size = tok.get_vocab_size()
        unused = _unused_merges(tok, texts)
        if size == target and unused <= MAX_UNUSED * size:
            break
        target = max(_round(smallest), _round(min(size, target) - unused))
    else:
        tok = _train_bpe(texts, target)
    return Tokenizer(tok)


MAX_ROUNDS = 6
MAX_UNUSED = 0.10


def _round(n: int) -> int:
    return n - n % ROUND_TO


def _unused_merges(tok: HFTokenizer, texts: list[str]) -> int:
    """Learned tokens (not bytes, not markers) that never occur in the encoded texts."""
    used: set[int] = set()
    for encoding in tok.encode_batch(texts, add_special_tokens=False):
        used.update(encoding.ids)
    first_merge = 256 + len(SPECIAL_TOKENS)
    return sum(1 for i in range(first_merge, tok.get_vocab_size()) if i not in used)


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
    if message["role"] == "user":
        return normalize_user_text(message["content"])
    return assistant_text(message)


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
            if role == "user":
                messages.append({"role": role, "content": tok.decode(current)})
            elif role == "assistant":
                topic, reply = split_topic(tok.decode(current))
                message = {"role": role, "content": reply}
                messages.append({**message, "topic": topic} if topic else message)
            role = None
        else:
            current.append(i)
    return messages

