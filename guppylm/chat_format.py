"""The chat format shared by the data generator, training and chat.

A conversation is `{"messages": [{"role": "user"|"assistant", "content": str}, ...],
"topic": str}`. User text goes through `normalize_user_text` both when the data is
generated and when a person types at the chat prompt, so the model never sees at chat
time a form of text that training could not have produced.
"""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")


def normalize_user_text(text: str) -> str:
    """Unicode NFC, one space between words, no leading or trailing space.

    Case, punctuation and typos are kept on purpose: the model should learn to read
    "HELLO GUPPY!!!" and "helo guppy" itself rather than have them hidden from it.
    """
    return _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()


def conversation(pairs: list[tuple[str, str]], topic: str) -> dict:
    """Build a conversation dict from (user, assistant) turns."""
    messages = []
    for user, assistant in pairs:
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": assistant})
    return {"messages": messages, "topic": topic}


def turns(conv: dict) -> list[tuple[str, str]]:
    """The (user, assistant) pairs of a conversation, in order."""
    msgs = conv["messages"]
    return [(msgs[i]["content"], msgs[i + 1]["content"]) for i in range(0, len(msgs) - 1, 2)]
