"""The chat format shared by the data generator, training and chat.

A conversation is `{"messages": [{"role": "user"|"assistant", "content": str}, ...],
"topic": str}`; an assistant message may also name its `topic`. User text goes through
`normalize_user_text` both when the data is generated and when a person types at the chat
prompt, so the model never sees at chat time a form of text that training could not have
produced.

The model writes the topic before the reply: "food | i like flakes." (`assistant_text`).
Naming the topic first puts the decision "what is this message about?" on one short
stretch of tokens with a clear target, instead of spreading it over the reply's words; a
tiny model learns to route unseen messages much faster that way (docs/benchmarks.md).
Chat shows only the reply (`split_topic`), and can show the topic too.
"""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")
TOPIC_SEP = " | "  # between the topic and the reply; "|" cannot occur in a persona's replies


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


def assistant_text(message: dict) -> str:
    """What the model writes for an assistant message: its topic, if known, then the reply."""
    topic = message.get("topic")
    return f"{topic}{TOPIC_SEP}{message['content']}" if topic else message["content"]


def split_topic(text: str) -> tuple[str | None, str]:
    """(topic, reply) from what the model wrote; (None, text) when it named no topic."""
    topic, sep, reply = text.partition(TOPIC_SEP)
    return (topic.strip(), reply.strip()) if sep else (None, text.strip())


def turns(conv: dict) -> list[tuple[str, str]]:
    """The (user, assistant) pairs of a conversation, in order."""
    msgs = conv["messages"]
    return [(msgs[i]["content"], msgs[i + 1]["content"]) for i in range(0, len(msgs) - 1, 2)]
