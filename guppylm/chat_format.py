"""The chat format: conversations as data, and the one template that turns them into ids.

A conversation is `{"messages": [{"role": "user"|"assistant", "content": str}, ...],
"topic": str}`; an assistant message may also name its `topic`. The template:

    <|user|> hi guppy <|end|> <|assistant|> <|topic:greetings|> hello. the water is warm. <|end|>

Every marker is a special token, one per topic too, so a standard tokenizer's
`decode(ids, skip_special_tokens=True)` of a generated turn is the reply alone, in any
runtime. Naming the topic first puts the decision "what is this message about?" on one
token with a clear target, instead of spreading it over the reply's words: a tiny model
learns to route unseen messages much faster that way (docs/benchmarks.md). The topic is
optional: a conversation without topics is encoded the same way, minus those tokens.

`encode_chat` also says what each id is to training (`NO_LOSS`, `REPLY`, `TOPIC`): the
model learns the assistant's turns, not the user's, and the topic token can be weighted.
"""

from __future__ import annotations

import re
import unicodedata
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the tokenizer module imports this one
    from guppylm.tokenizer import Tokenizer

USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
TOPIC_TOKEN = re.compile(r"<\|topic:(.+?)\|>")
NO_LOSS, REPLY, TOPIC = 0, 1, 2  # what an id of an encoded chat is to training

_SPACES = re.compile(r"\s+")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")  # where one sentence ends and the next begins


def topic_token(name: str) -> str:
    """The special token that names a topic: "food" -> "<|topic:food|>"."""
    return f"<|topic:{name}|>"


def normalize_user_text(text: str) -> str:
    """Unicode NFC, lowercase, one space between words, no leading or trailing space.

    Case is folded because byte-level BPE spells "HELLO" with other tokens than "hello":
    a tiny model would have to learn every word twice. Punctuation and typos are kept;
    the model learns to read "helo guppy!!!" from data that contains such slips.
    """
    return _SPACES.sub(" ", unicodedata.normalize("NFC", text).lower()).strip()


def conversation(exchanges: list[tuple[str, str, str]]) -> dict:
    """Build a conversation dict from (user, assistant, topic of the answer) turns."""
    messages = []
    for user, assistant, topic in exchanges:
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": assistant, "topic": topic})
    return {"messages": messages, "topic": exchanges[0][2]}


def turns(conv: dict) -> list[tuple[str, str]]:
    """The (user, assistant) pairs of a conversation, in order."""
    msgs = conv["messages"]
    return [(msgs[i]["content"], msgs[i + 1]["content"]) for i in range(0, len(msgs) - 1, 2)]


def split_sentences(text: str) -> list[str]:
    return [s for s in SENTENCE_END.split(text.strip()) if s]


def first_sentence(text: str) -> str:
    """The first sentence, lowercased: what a reader notices when a reply repeats itself."""
    sentences = split_sentences(text)
    return sentences[0].strip().lower() if sentences else ""


def opening_to_avoid(messages: list[dict]) -> str:
    """The first sentence of the last assistant message ("" if none): a reply that opens the
    way the previous one did sounds broken, so chat does not open with it again."""
    said = [m["content"] for m in messages if m["role"] == "assistant"]
    return first_sentence(said[-1]) if said else ""


def topics_of(conversations: list[dict]) -> list[str]:
    """Every topic an assistant message names, sorted: the topic tokens a tokenizer needs."""
    return sorted({m["topic"] for conv in conversations for m in conv["messages"]
                   if m["role"] == "assistant" and m.get("topic")})


def message_text(message: dict) -> str:
    """A message's text as the model reads it (user text normalised, as at chat time)."""
    if message["role"] == "user":
        return normalize_user_text(message["content"])
    return message["content"]


def chat_texts(conversations: list[dict]) -> list[str]:
    """The message texts a tokenizer is trained on."""
    return [message_text(m) for conv in conversations for m in conv["messages"]]


# ----------------------------------------------------------------------------- the template

def encode_chat(tok: Tokenizer, messages: list[dict],
                add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """Messages -> (ids, what each id is to training: NO_LOSS, REPLY or TOPIC).

    With `add_generation_prompt`, the ids end with <|assistant|>: the model's cue to reply.
    """
    contents = tok.hf.encode_batch([message_text(m) for m in messages],
                                   add_special_tokens=False)
    ids, mask = _assemble(tok, messages, [c.ids for c in contents])
    if add_generation_prompt:
        ids.append(tok.assistant_id)
        mask.append(NO_LOSS)
    return ids, mask


def encode_chats(tok: Tokenizer, conversations: list[dict]) -> list[tuple[list[int], list[int]]]:
    """`encode_chat` for many conversations at once (one fast batched call to the BPE)."""
    contents = tok.hf.encode_batch(chat_texts(conversations), add_special_tokens=False)
    out, k = [], 0
    for conv in conversations:
        n = len(conv["messages"])
        out.append(_assemble(tok, conv["messages"], [c.ids for c in contents[k:k + n]]))
        k += n
    return out


def _assemble(tok: Tokenizer, messages: list[dict],
              contents: list[list[int]]) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    mask: list[int] = []
    for message, content in zip(messages, contents, strict=True):
        if message["role"] == "user":
            ids += [tok.user_id, *content, tok.end_id]
            mask += [NO_LOSS] * (len(content) + 2)
            continue
        ids.append(tok.assistant_id)
        mask.append(NO_LOSS)
        if message.get("topic"):
            ids.append(tok.topic_id(message["topic"]))
            mask.append(TOPIC)
        ids += [*content, tok.end_id]  # the reply and the end of the turn are learned
        mask += [REPLY] * (len(content) + 1)
    return ids, mask


def decode_chat(tok: Tokenizer, ids: list[int]) -> list[dict]:
    """The inverse of `encode_chat`: ids back into messages."""
    messages: list[dict] = []
    message: dict | None = None
    current: list[int] = []
    for i in ids + [tok.end_id]:
        if i in (tok.user_id, tok.assistant_id):
            message = {"role": "user" if i == tok.user_id else "assistant"}
            current = []
        elif i == tok.end_id:
            if message is not None:
                messages.append({**message, "content": tok.decode(current)})
            message = None
        elif i in tok.topics and message is not None and not current:
            message["topic"] = tok.topics[i]
        else:
            current.append(i)
    return messages
