"""Exports: a trained fish leaves this repository and runs where people run models.

    guppy export hf   runs/guppy out/guppy-hf       # transformers (GPT-2 architecture)
    guppy export onnx runs/guppy out/guppy-onnx     # ONNX Runtime, transformers.js (--int8)
    guppy export web  runs/guppy out/guppy-web      # a static page: the chat in the browser
    guppy export gguf runs/guppy out/guppy.gguf     # llama.cpp, Ollama

One idea per file:

- `folder.py`   checks the run folder and writes an export atomically (all or nothing);
- `template.py` our chat format as a Jinja chat template (and Ollama's Go template);
- `hf.py`       Hugging Face files: GPT-2 config, safetensors weights, tokenizer;
- `onnx.py`     a decoder with a KV cache, exported with `torch.onnx`, and its int8 copy;
- `ort.py`      a generation loop on ONNX Runtime (tests and benchmarks use it);
- `web.py`      a static folder with the int8 model and transformers.js;
- `gguf.py`     one GGUF file for llama.cpp and an Ollama Modelfile beside it.

Our model is GPT-2's layout exactly (model.py), so each export is a renaming (and, for
transformers' Conv1D layers, a transposition) of the same weights.
"""

from __future__ import annotations

from pathlib import Path

FORMATS = ("hf", "onnx", "web", "gguf")


def export(fmt: str, run: Path, out: Path, force: bool = False, int8: bool = False,
           vendor: Path | str | None = None) -> Path:
    """`guppy export FORMAT RUN OUT`: write the export; return where it went."""
    if fmt == "hf":
        from guppylm.export.hf import export_hf

        return export_hf(run, out, force=force)
    if fmt == "onnx":
        from guppylm.export.onnx import export_onnx

        return export_onnx(run, out, int8=int8, force=force)
    if fmt == "web":
        from guppylm.export.web import export_web

        return export_web(run, out, force=force, vendor=vendor)
    if fmt == "gguf":
        from guppylm.export.gguf import export_gguf

        return export_gguf(run, out, force=force)
    raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
