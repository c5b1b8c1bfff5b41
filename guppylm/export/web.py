"""`guppy export web`: a static folder in which the chat runs entirely in the browser.

    OUT/index.html                  the chat page (web.html, with the model's name and topics)
    OUT/model/                      the Hugging Face files (hf.py) and onnx/model_quantized.onnx
    OUT/vendor/                     transformers.js and ONNX Runtime's WebAssembly build

transformers.js reads the model folder as it reads one from the Hugging Face Hub: the chat
template in tokenizer_config.json builds the prompt, generation_config.json says when a reply
ends and how to sample. The JavaScript is vendored: `make vendor` fetches pinned versions
from the npm registry once (guppylm/export/vendor/), and every export copies them, so the
page fetches nothing from another host and exporting downloads nothing.

    cd OUT && python -m http.server     # then open http://127.0.0.1:8000/
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from guppylm.checkpoint import load_run
from guppylm.errors import GuppyError
from guppylm.export.folder import building, need
from guppylm.export.hf import write_hf
from guppylm.export.onnx import write_onnx
from guppylm.generate import SamplingConfig
from guppylm.pages import chat_page
from guppylm.tokenizer import Tokenizer

VENDOR = Path(__file__).with_name("vendor")  # filled by `make vendor`
VENDOR_FILES = ("transformers.min.js", "ort-wasm-simd-threaded.asyncify.mjs",
                "ort-wasm-simd-threaded.asyncify.wasm")


def check_vendor(vendor: Path) -> Path:
    """The folder of vendored JavaScript, or a one-line error saying how to fill it."""
    missing = [name for name in VENDOR_FILES if not (vendor / name).is_file()]
    if missing:
        raise GuppyError(f"{vendor}: the vendored JavaScript is missing ({missing[0]}); run "
                         "`make vendor` in the repository (it fetches pinned transformers.js "
                         "and onnxruntime-web from the npm registry), or pass --vendor DIR")
    return vendor


def page(name: str, tok: Tokenizer) -> str:
    """index.html: web.html with the settings the page reads from its JSON block."""
    s = SamplingConfig()
    settings = {"name": name, "temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p,
                "max_new_tokens": s.max_new_tokens,
                "topics": {str(i): topic for i, topic in tok.topics.items()}}
    html = resources.files("guppylm.export").joinpath("web.html").read_text(encoding="utf-8")
    return chat_page(html, settings)


def export_web(run: Path, out: Path, force: bool = False,
               vendor: Path | str | None = None) -> Path:
    """`guppy export web RUN OUT`: the static chat folder; return OUT."""
    model, tok, config = load_run(Path(run))
    vendor = check_vendor(Path(vendor) if vendor else VENDOR)
    need("onnx", "onnxscript", "onnxruntime", purpose="guppy export web")
    with building(Path(out), force) as tmp:
        (tmp / "model").mkdir()
        write_hf(model, tok, tmp / "model")
        write_onnx(model, tmp / "model", int8=True)
        (tmp / "model" / "onnx" / "model.onnx").unlink()  # the page loads the int8 model
        (tmp / "model" / "model.safetensors").unlink()  # (and never PyTorch weights)
        shutil.copytree(vendor, tmp / "vendor")
        (tmp / "index.html").write_text(page(config.get("persona_name", "Guppy"), tok),
                                        encoding="utf-8")
    return Path(out)
