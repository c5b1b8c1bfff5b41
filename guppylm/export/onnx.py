"""`guppy export onnx`: the model as an ONNX decoder with a KV cache, and its int8 copy.

    OUT/onnx/model.onnx             fp32
    OUT/onnx/model_quantized.onnx   int8 weights (--int8), where transformers.js looks for it
    OUT/config.json, tokenizer ...  the Hugging Face files (hf.py) that loops read beside it

The graph has the inputs and outputs of Hugging Face's ONNX exports of GPT-2, which
transformers.js and hand-written ONNX Runtime loops (ort.py) call:

    input_ids          (batch, new)         the new tokens
    attention_mask     (batch, past + new)  1 for a real token, 0 for padding
    position_ids       (batch, new)         where each new token sits
    past_key_values.N.key / .value   (batch, heads, past, head size)   N = 0 .. layers - 1
 -> logits             (batch, new, vocab)
    present.N.key / .value           (batch, heads, past + new, head size)

The first call passes an empty past (length 0); each later call passes the presents back.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path

import torch
import torch.nn as nn

from guppylm.checkpoint import load_run
from guppylm.export.folder import building, need
from guppylm.export.hf import write_hf
from guppylm.model import GPT

OPSET = 18


class MatMul(nn.Module):
    """`x @ weight + bias` with the weight stored (in, out), as transformers' Conv1D does.

    An nn.Linear exports as a MatMul by a transposed weight, computed at every call; this
    exports as a MatMul by the weight itself, which int8 quantisation recognises.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().t().contiguous())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight
        return y if self.bias is None else y + self.bias


def with_matmuls(model: GPT) -> GPT:
    """A copy of `model` whose nn.Linear layers are MatMul layers. The output layer gets
    its own (transposed) copy of the token embedding: the graph stores both."""
    copy = deepcopy(model).eval()
    for name, module in list(copy.named_modules()):
        if isinstance(module, nn.Linear):
            parent, _, attr = name.rpartition(".")
            setattr(copy.get_submodule(parent) if parent else copy, attr, MatMul(module))
    return copy


class CachedDecoder(nn.Module):
    """Our GPT with its cache as explicit inputs and outputs, and an attention mask.

    model.py keeps keys and values in dicts; an exported graph cannot, so this forward
    takes them in and hands them out. The weights are the model's own.
    """

    def __init__(self, model: GPT):
        super().__init__()
        self.model = with_matmuls(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        x = m.wte(input_ids) + m.wpe(position_ids)
        allowed = visible(attention_mask, input_ids.shape[1])
        presents: list[torch.Tensor] = []
        for i, block in enumerate(m.h):
            y, k, v = attend(block.attn, block.ln_1(x), past[2 * i], past[2 * i + 1], allowed)
            x = x + y
            x = x + block.mlp(block.ln_2(x))
            presents += [k, v]
        return m.lm_head(m.ln_f(x)), *presents


def visible(attention_mask: torch.Tensor, new: int) -> torch.Tensor:
    """(batch, 1, new, past + new): may new token i see token j? Only earlier tokens and
    itself (causal), and never padding; a token always sees itself, so that a padding row
    still has something to attend to (no NaN from an all-masked softmax)."""
    total = attention_mask.shape[1]
    j = torch.arange(total, device=attention_mask.device)
    i = torch.arange(new, device=attention_mask.device) + (total - new)  # absolute positions
    causal = j[None, :] <= i[:, None]
    return (causal[None] & attention_mask[:, None, :].bool())[:, None] | (j == i[:, None])


def attend(attn: nn.Module, h: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor,
           allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """model.py's CausalSelfAttention with the cache passed in and out: (output, keys,
    values), the keys and values covering the past and the new tokens. The softmax is
    written out (rather than scaled_dot_product_attention) so the graph reads as the paper."""
    B, T, C = h.shape
    q, k, v = attn.c_attn(h).split(C, dim=2)
    q, k, v = (t.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2) for t in (q, k, v))
    k = torch.cat([past_k, k], dim=2)
    v = torch.cat([past_v, v], dim=2)
    scores = (q @ k.transpose(2, 3)) * (1.0 / math.sqrt(C // attn.n_head))
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    y = scores.softmax(dim=-1) @ v
    return attn.c_proj(y.transpose(1, 2).reshape(B, T, C)), k, v


def io_names(n_layer: int) -> tuple[list[str], list[str]]:
    """The graph's input and output names, in order."""
    kv = [f"{i}.{kind}" for i in range(n_layer) for kind in ("key", "value")]
    inputs = ["input_ids", "attention_mask", "position_ids"]
    inputs += [f"past_key_values.{name}" for name in kv]
    outputs = ["logits"] + [f"present.{name}" for name in kv]
    return inputs, outputs


def export_decoder(model: GPT, path: Path) -> None:
    """Write `model` as an ONNX decoder with a KV cache (fp32) to `path`."""
    cfg = model.cfg
    head = cfg.d_model // cfg.n_head
    batch, new, past = 2, 3, 4  # example sizes; every one of them is dynamic in the graph
    example = (torch.zeros(batch, new, dtype=torch.long),
               torch.ones(batch, past + new, dtype=torch.long),
               torch.arange(past, past + new).repeat(batch, 1),
               *[torch.zeros(batch, cfg.n_head, past, head) for _ in range(2 * cfg.n_layer)])
    dyn = torch.export.Dim.DYNAMIC  # sizes the exporter relates itself (mask = past + new)
    shapes = ({0: dyn, 1: dyn}, {0: dyn, 1: dyn}, {0: dyn, 1: dyn},
              tuple({0: dyn, 2: dyn} for _ in range(2 * cfg.n_layer)))  # *past: one entry
    inputs, outputs = io_names(cfg.n_layer)
    with warnings.catch_warnings(), quiet("torch.onnx"), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter is chatty about its internals
        program = torch.onnx.export(CachedDecoder(model.eval()), example, dynamo=True,
                                    input_names=inputs, output_names=outputs,
                                    dynamic_shapes=shapes, opset_version=OPSET,
                                    verbose=False, optimize=True)
    program.save(str(path))
    name_sizes(path)


def name_sizes(path: Path) -> None:
    """Name the graph's variable sizes as Hugging Face's exports do ("batch_size",
    "sequence_length", "past_sequence_length"): the exporter calls them s0, s1, ..., and
    transformers.js reads these names to build the empty cache of the first call."""
    import onnx

    model = onnx.load(str(path))
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"},
            "position_ids": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "total_sequence_length"}}
    names: dict[str, str] = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        wanted = axes.get(value.name, {0: "batch_size", 2: "past_sequence_length"})
        names.update({dims[i].dim_param: name for i, name in wanted.items()
                      if dims[i].dim_param})
    symbol = re.compile(r"[A-Za-z_]\w*")
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = symbol.sub(lambda m: names.get(m[0], m[0]), dim.dim_param)
    onnx.save(model, str(path))


def quantize_int8(src: Path, dst: Path) -> None:
    """A copy of `src` whose matrix weights are int8, dequantized on the fly ("dynamic"
    quantisation: activations are quantised per call, so no calibration data is needed).
    About 4x smaller for the matrices; the logits move a little (docs/export.md)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet(""):  # it logs advice to pre-process first, meant for image models
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gather"])


@contextmanager
def quiet(logger: str) -> Iterator[None]:
    """Only errors from `logger` ("": the root logger) while inside."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def write_onnx(model: GPT, folder: Path, int8: bool = False) -> None:
    """onnx/model.onnx (and onnx/model_quantized.onnx with `int8`) into `folder`."""
    (folder / "onnx").mkdir()
    export_decoder(model, folder / "onnx" / "model.onnx")
    if int8:
        quantize_int8(folder / "onnx" / "model.onnx", folder / "onnx" / "model_quantized.onnx")


def export_onnx(run: Path, out: Path, int8: bool = False, force: bool = False) -> Path:
    """`guppy export onnx RUN OUT [--int8]`: the Hugging Face files plus the ONNX decoder."""
    model, tok, _ = load_run(Path(run))
    need("onnx", "onnxscript", "onnxruntime", purpose="guppy export onnx")
    with building(Path(out), force) as tmp:
        write_hf(model, tok, tmp)
        write_onnx(model, tmp, int8)
    return Path(out)
