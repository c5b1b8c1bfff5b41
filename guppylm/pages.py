"""The two chat pages (the server's, static/index.html, and the web export's,
export/web.html) filled in for a model: one stylesheet, and the settings the page reads."""

from __future__ import annotations

import json
from importlib import resources

CONFIG_BLOCK = '<script id="guppy-config" type="application/json">{}</script>'
STYLE_SLOT = "/* chat.css: shared by the server's page and the web export's, inlined here */"


def chat_page(template: str, settings: dict) -> str:
    """`template` with static/chat.css inlined and `settings` in its JSON block, so the page
    stays one file that fetches nothing."""
    css = resources.files("guppylm").joinpath("static/chat.css").read_text(encoding="utf-8")
    block = json.dumps(settings).replace("<", "\\u003c")  # nothing in it can close <script>
    return (template.replace(STYLE_SLOT, css.rstrip("\n"))
            .replace(CONFIG_BLOCK, CONFIG_BLOCK.replace("{}", block)))
