"""The transformer: a GPT-style decoder, as in "Attention Is All You Need" (decoder half)
and GPT-2, in one readable file.

    tokens -> token embedding + position embedding
           -> N x Block( x + Attention(LayerNorm(x)); x + MLP(LayerNorm(x)) )
           -> LayerNorm -> output layer (shares weights with the token embedding) -> logits

The layout (names, biases, pre-LayerNorm, learned positions, tied head) matches GPT-2 in
Hugging Face `transformers`, so a trained Guppy can be exported to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE = -100  # the target of a position that carries no loss (cross_entropy's default)


@dataclass
class GPTConfig:
    vocab_size: int = 4096
    context: int = 256  # the longest sequence the model reads (learned positions)
    n_layer: int = 6
    n_head: int = 6
    d_model: int = 384  # width of the residual stream ("d_model" in the paper)
    d_mlp: int = 768  # hidden width of the MLP ("d_ff" in the paper)
    dropout: float = 0.0


PRESETS = {
    "guppy-9m": GPTConfig(n_layer=6, n_head=6, d_model=384, d_mlp=768, context=256),
    "guppy-4m": GPTConfig(n_layer=4, n_head=4, d_model=256, d_mlp=1024, context=256),
    "guppy-2m": GPTConfig(n_layer=4, n_head=4, d_model=192, d_mlp=768, context=256),
    "guppy-1m": GPTConfig(n_layer=4, n_head=4, d_model=128, d_mlp=512, context=256),
    "guppy-tiny": GPTConfig(n_layer=2, n_head=2, d_model=32, d_mlp=64, context=128),  # tests
}


class CausalSelfAttention(nn.Module):
    """Multi-head attention where each position sees only itself and earlier positions."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.d_model % cfg.n_head == 0, "d_model must divide evenly into heads"
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # queries, keys, values at once
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)  # mixes the heads back together

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, heads, T, head size): each head attends on its own slice
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:  # generation: remember keys and values of earlier tokens
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        # softmax(q k^T / sqrt(head size)) v, with future positions masked out. One new
        # token attends to everything cached, so it needs no mask.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """Position-wise feed-forward network: widen, non-linearity, narrow.

    GELU rather than the paper's ReLU: GPT-2 uses it, so the export matches, and its
    smooth gradient around zero trains small models a little better.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.c_proj = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """One transformer layer. Pre-LayerNorm (GPT-2): normalise, transform, add back."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)  # residual connections keep gradients flowing
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)  # token embedding
        self.wpe = nn.Embedding(cfg.context, cfg.d_model)  # learned position embedding
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: read and write words alike
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale layers that add to the residual
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied head is counted once

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                caches: list[dict] | None = None,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for every position; or, given targets, the mean cross-entropy loss.

        Targets of IGNORE (user turns, padding) are ignored. `weights` (one per target)
        make some tokens count more in the mean. With `caches` (one dict per layer), `idx`
        continues the cached tokens.
        """
        start = caches[0]["k"].shape[2] if caches and "k" in caches[0] else 0
        T = idx.shape[1]
        assert start + T <= self.cfg.context, f"{start + T} tokens > context {self.cfg.context}"
        assert start == 0 or T == 1, "after the first call, a cache takes one token at a time"
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for i, block in enumerate(self.h):
            x = block(x, caches[i] if caches is not None else None)
        x = self.ln_f(x)
        if targets is None:
            return self.lm_head(x)
        scored = (targets != IGNORE).float()
        weights = scored if weights is None else weights * scored
        if only_scored_rows(x):  # the output layer only where there is a target
            keep = targets != IGNORE
            x, targets, weights = x[keep], targets[keep], weights[keep]
        losses = F.cross_entropy(self.lm_head(x).flatten(0, -2).float(), targets.flatten(),
                                 reduction="none")  # 0 where the target is IGNORE
        return (losses * weights.flatten()).sum() / weights.sum()


def only_scored_rows(x: torch.Tensor) -> bool:
    """Whether to run the output layer only on the positions that have a target. On a CPU
    it saves much of a small model's step (its vocabulary is wide next to its layers). On a
    GPU, picking those rows makes the host wait to count them, so all rows are computed."""
    return x.device.type == "cpu"
