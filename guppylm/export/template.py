"""Our chat format (chat_format.py) as the templates other runtimes read.

transformers, transformers.js and llama-cpp-python render a Jinja "chat template" stored
with the tokenizer; the text it renders is then tokenized with every marker (`<|user|>`,
`<|end|>`, `<|assistant|>`, `<|topic:NAME|>`) read as the one special token it is, so the
ids are exactly `encode_chat`'s:

    <|user|>hi guppy<|end|><|assistant|>           (add_generation_prompt=True)

User text is normalised as `normalize_user_text` does, lowercase and one space between
words, with one difference: Jinja has no Unicode NFC, so text typed in decomposed form
(rare: "e" + a combining accent instead of "é") reaches the model as other bytes.
System messages are skipped, as `guppy serve` skips them: Guppy was never trained with one.
"""

from __future__ import annotations

# Each line is one piece; whitespace control on every tag keeps the template from adding
# spaces or line breaks of its own. The markers are chat_format.py's (a test checks).
CHAT_TEMPLATE = "".join([
    "{%- for message in messages -%}",
    "{%- if message['role'] == 'user' -%}",
    "<|user|>{{ (message['content'] | lower).split() | join(' ') }}<|end|>",
    "{%- elif message['role'] == 'assistant' -%}",
    "<|assistant|>",
    "{%- if message['topic'] is defined and message['topic'] -%}",
    "<|topic:{{ message['topic'] }}|>",
    "{%- endif -%}",
    "{{ message['content'] }}<|end|>",
    "{%- endif -%}",
    "{%- endfor -%}",
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}",
])

# Ollama's Modelfile speaks Go templates, which cannot lowercase: Ollama users should type
# lowercase, or the model reads "HELLO" as bytes it rarely saw in training.
OLLAMA_TEMPLATE = "".join([
    "{{- range .Messages }}",
    '{{- if eq .Role "user" }}<|user|>{{ .Content }}<|end|>',
    '{{- else if eq .Role "assistant" }}<|assistant|>{{ .Content }}<|end|>',
    "{{- end }}",
    "{{- end }}<|assistant|>",
])
