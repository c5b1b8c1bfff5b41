"""`guppy export gguf`: one GGUF file for llama.cpp (and Ollama, with the Modelfile beside it).

GGUF is llama.cpp's single-file format: metadata (the architecture, its sizes, the tokenizer,
the chat template, sampling defaults) followed by the tensors. Our model is llama.cpp's
`gpt2` architecture; only the names change:

    wte -> token_embd          h.N.ln_1 -> blk.N.attn_norm    h.N.attn.c_attn -> blk.N.attn_qkv
    wpe -> position_embd       h.N.ln_2 -> blk.N.ffn_norm     h.N.attn.c_proj -> blk.N.attn_output
    ln_f -> output_norm        h.N.mlp.c_fc -> blk.N.ffn_up   h.N.mlp.c_proj -> blk.N.ffn_down
    lm_head -> output (a copy of token_embd: llama.cpp's gpt2 reads both)

Weights stay float32 and in nn.Linear's (out, in) layout, which is what llama.cpp stores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from guppylm.atomic import atomic_write_all
from guppylm.checkpoint import load_run
from guppylm.errors import GuppyError
from guppylm.export.folder import need
from guppylm.export.hf import end_ids
from guppylm.export.template import CHAT_TEMPLATE, OLLAMA_TEMPLATE
from guppylm.generate import SamplingConfig
from guppylm.model import GPT
from guppylm.tokenizer import Tokenizer

NAMES = {"wte": "token_embd", "wpe": "position_embd", "ln_f": "output_norm",
         "ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
         "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}


def gguf_name(name: str) -> str:
    """Our tensor name -> llama.cpp's: "h.3.attn.c_attn.weight" -> "blk.3.attn_qkv.weight"."""
    module, _, kind = name.rpartition(".")
    if module.startswith("h."):
        _, layer, rest = module.split(".", 2)
        return f"blk.{layer}.{NAMES[rest]}.{kind}"
    return f"{NAMES[module]}.{kind}"


def gguf_tensors(model: GPT) -> dict[str, np.ndarray]:
    """The weights under llama.cpp's names, as float32 arrays."""
    state = model.state_dict()
    tensors = {gguf_name(k): v.detach().float().cpu().numpy() for k, v in state.items()
               if k != "lm_head.weight"}
    tensors["output.weight"] = tensors["token_embd.weight"].copy()  # the tied head
    return tensors


def vocabulary(tok: Tokenizer) -> tuple[list[str], list[int], list[str]]:
    """(tokens in id order, their GGUF types, BPE merges as "a b") from tokenizer.json."""
    import gguf

    by_id = {i: t for t, i in tok.hf.get_vocab(with_added_tokens=True).items()}
    special = {t.content for t in tok.hf.get_added_tokens_decoder().values() if t.special}
    tokens = [by_id[i] for i in range(len(by_id))]
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    merges = json.loads(tok.hf.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    return tokens, [int(t) for t in types], merges


def write_gguf(model: GPT, tok: Tokenizer, name: str, path: Path) -> None:
    """The GGUF file for `model` and `tok` at `path`."""
    import gguf

    cfg, sampling = model.cfg, SamplingConfig()
    w = gguf.GGUFWriter(str(path), arch="gpt2")
    w.add_name(name)
    w.add_context_length(cfg.context)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.d_mlp)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)
    w.add_layer_norm_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens, types, merges = vocabulary(tok)
    w.add_tokenizer_model("gpt2")  # byte-level BPE
    w.add_tokenizer_pre("gpt-2")  # GPT-2's pre-tokenizer regex, as our ByteLevel uses
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.end_id)  # GPT-2 style; never added (add_bos_token false)
    w.add_add_bos_token(False)
    w.add_eos_token_id(tok.end_id)
    w.add_eot_token_id(tok.end_id)
    w.add_pad_token_id(tok.end_id)
    w.add_chat_template(CHAT_TEMPLATE)
    w.add_sampling_temp(sampling.temperature)
    w.add_sampling_top_k(sampling.top_k)
    w.add_sampling_top_p(sampling.top_p)
    for tensor_name, array in gguf_tensors(model).items():
        w.add_tensor(tensor_name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def modelfile(gguf_file: str, tok: Tokenizer, context: int) -> str:
    """An Ollama Modelfile: the GGUF beside it, our template and sampling, stop tokens."""
    s = SamplingConfig()
    stops = "".join(f'PARAMETER stop "{tok.hf.id_to_token(i)}"\n' for i in end_ids(tok))
    return (f"# ollama create guppy -f Modelfile && ollama run guppy\n"
            f"FROM ./{gguf_file}\n"
            f'TEMPLATE """{OLLAMA_TEMPLATE}"""\n'
            f"{stops}"
            f"PARAMETER temperature {s.temperature}\nPARAMETER top_k {s.top_k}\n"
            f"PARAMETER top_p {s.top_p}\nPARAMETER num_ctx {context}\n")


def export_gguf(run: Path, out: Path, force: bool = False) -> Path:
    """`guppy export gguf RUN OUT.gguf`: the GGUF file and a `Modelfile` beside it."""
    out = Path(out)
    if out.suffix != ".gguf" or out.is_dir():
        raise GuppyError(f"{out}: not a .gguf file name; give one, e.g. out/guppy.gguf")
    recipe = out.with_name("Modelfile")
    for path in (out, recipe):
        if path.exists() and not force:
            raise GuppyError(f"{path}: exists; choose another OUT, or add --force to "
                             "replace it")
    model, tok, config = load_run(Path(run))
    need("gguf", purpose="guppy export gguf")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_all({out: lambda tmp: write_gguf(model, tok, config.get("persona_name",
                                                                         "guppy"), tmp),
                      recipe: modelfile(out.name, tok, model.cfg.context)})
    return out
