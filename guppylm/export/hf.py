"""`guppy export hf`: a Hugging Face model folder that `transformers` loads as GPT-2.

    config.json              GPT2Config: our shape, GELU (tanh), LayerNorm eps 1e-5
    generation_config.json   end of turn as EOS, and our sampling (0.7, top-k 40, top-p 0.9)
    model.safetensors        the weights under GPT-2's names
    tokenizer.json           our byte-level BPE, unchanged (markers are special tokens)
    tokenizer_config.json    special tokens and the chat template (template.py)

No custom code: `AutoModelForCausalLM.from_pretrained(OUT)` and `AutoTokenizer.from_pretrained
(OUT)` read it with transformers' own GPT-2. model.py uses GPT-2's names already; the one real
change is that transformers' GPT-2 stores its projections in `Conv1D` layers, whose weight is
the transpose of `nn.Linear`'s (in x out rather than out x in).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from guppylm.chat_format import ASSISTANT, END, USER
from guppylm.checkpoint import load_run
from guppylm.export.folder import building
from guppylm.export.template import CHAT_TEMPLATE
from guppylm.generate import SamplingConfig
from guppylm.model import GPT, GPTConfig
from guppylm.tokenizer import Tokenizer

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_weights(model: GPT) -> dict[str, torch.Tensor]:
    """Our state dict under transformers' GPT-2 names. The head is tied to the token
    embedding (config: tie_word_embeddings), so it is not stored."""
    weights = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        if name.endswith(CONV1D):
            tensor = tensor.t()  # nn.Linear (out, in) -> Conv1D (in, out)
        weights[f"transformer.{name}"] = tensor.detach().float().contiguous().cpu()
    return weights


def end_ids(tok: Tokenizer) -> list[int]:
    """Tokens that end a reply: the end of the turn, and (as in `Guppy.stream`) the marker of
    a new turn, which a model should never write but a small one sometimes does."""
    return [tok.end_id, tok.user_id, tok.assistant_id]


def hf_config(cfg: GPTConfig, tok: Tokenizer) -> dict:
    """transformers' GPT2Config for our model."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.context, "n_ctx": cfg.context,
        "n_embd": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
        "n_inner": cfg.d_mlp,
        "activation_function": "gelu_new",  # GELU, tanh approximation (model.py's MLP)
        "layer_norm_epsilon": 1e-5,  # nn.LayerNorm's default
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "use_cache": True, "tie_word_embeddings": True,
        "bos_token_id": tok.end_id, "eos_token_id": tok.end_id, "pad_token_id": tok.end_id,
        "dtype": "float32",
    }


def generation_config(tok: Tokenizer, sampling: SamplingConfig | None = None) -> dict:
    """Defaults for `generate` and pipelines: our sampling, and stop at the end of a turn."""
    s = sampling or SamplingConfig()
    return {"eos_token_id": end_ids(tok), "pad_token_id": tok.end_id,
            "bos_token_id": tok.end_id, "do_sample": True, "temperature": s.temperature,
            "top_k": s.top_k, "top_p": s.top_p, "max_new_tokens": s.max_new_tokens}


def tokenizer_config(tok: Tokenizer, context: int) -> dict:
    """tokenizer_config.json: the generic fast tokenizer over tokenizer.json (so nothing is
    rebuilt or re-normalised), the end of turn as EOS, and the chat template."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": END, "pad_token": END, "bos_token": None, "unk_token": None,
        "additional_special_tokens": [USER, ASSISTANT],
        "model_max_length": context, "clean_up_tokenization_spaces": False,
        "add_prefix_space": False, "chat_template": CHAT_TEMPLATE,
    }


def write_hf(model: GPT, tok: Tokenizer, folder: Path) -> None:
    """The Hugging Face files for `model` and `tok`, into an existing folder."""
    def dump(name: str, value: dict) -> None:
        (folder / name).write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")

    dump("config.json", hf_config(model.cfg, tok))
    dump("generation_config.json", generation_config(tok))
    dump("tokenizer_config.json", tokenizer_config(tok, model.cfg.context))
    tok.save(folder / "tokenizer.json")
    save_file(hf_weights(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "model.safetensors").chmod(0o644)  # safetensors makes it owner-only


def export_hf(run: Path, out: Path, force: bool = False) -> Path:
    """`guppy export hf RUN OUT`: write the Hugging Face folder; return OUT."""
    model, tok, _ = load_run(Path(run))
    with building(Path(out), force) as tmp:
        write_hf(model, tok, tmp)
    return Path(out)
