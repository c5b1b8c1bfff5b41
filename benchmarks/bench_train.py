"""Training and generation speed, side by side in one run, on whatever machine runs it.

    python benchmarks/bench_train.py [--threads 2] [--steps 6] [--device cpu]

Prints, for the same 8.7M-parameter model size:
- the fp32 (and bf16) matmul peak of this machine, measured now;
- an *anchor* step built like the inspiring project's: 32 random conversations padded to the
  longest, a 4,096-token vocabulary the data cannot fill, the output layer on every position;
- GuppyLM's step: length-bucketed batches, a vocabulary sized to the data, the output layer
  only where there is a target; optionally bf16 autocast and torch.compile;
- computed and real tokens/s, padding share, step time, model FLOP utilisation (MFU);
- generation tokens/s with and without the KV cache.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F

from guppylm import data, persona
from guppylm.batching import IGNORE, collate, encode_examples, make_batches
from guppylm.chat_format import chat_texts, topics_of
from guppylm.generate import SamplingConfig, stream, stream_without_cache
from guppylm.model import GPT, PRESETS, GPTConfig
from guppylm.tokenizer import train_tokenizer


def matmul_peak(dtype: torch.dtype, device: str, repeats: int = 5) -> float:
    """Best GFLOP/s of (8192x384)@(384xN) for the widths the model uses."""
    best = 0.0
    for n in (384, 1536, 4096):
        a = torch.randn(8192, 384, device=device, dtype=dtype)
        b = torch.randn(384, n, device=device, dtype=dtype)
        a @ b
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            a @ b
            _sync(device)
            best = max(best, 2 * 8192 * 384 * n / (time.perf_counter() - t) / 1e9)
    return best


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step_flops(cfg: GPTConfig, B: int, T: int, head_tokens: int) -> float:
    """FLOPs of one forward+backward step: 6 per weight per token for the matmuls, plus
    attention scores and mixing (QK^T and AV), plus the output layer where it is computed."""
    d, L = cfg.d_model, cfg.n_layer
    per_token_weights = L * (4 * d * d + 2 * d * cfg.d_mlp)
    attention = L * 2 * 2 * T * d  # QK^T and AV, forward, full square (as in PaLM's MFU)
    head = 6 * d * cfg.vocab_size * head_tokens
    return 6 * per_token_weights * B * T + 3 * attention * B * T + head


def anchor_loss(model: GPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The inspiring project's way: logits for every position, then mask the loss."""
    logits = model(x)
    return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=IGNORE)


def time_steps(model, batches, loss_fn, steps, device, amp=None) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 1):
        x, y, _ = batches[i % len(batches)]
        x, y = x.to(device), y.to(device)
        _sync(device)
        t = time.perf_counter()
        with torch.autocast(device, dtype=amp or torch.float32, enabled=amp is not None):
            loss = loss_fn(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t)
    return times


def report(name, times, batches, cfg, peak, head_of) -> dict:
    n = len(times)
    used = [batches[(i + 1) % len(batches)] for i in range(n)]
    computed = sum(x.numel() for x, _, _ in used)
    real = sum(r for _, _, r in used)
    flops = sum(step_flops(cfg, x.shape[0], x.shape[1], head_of(x, y)) for x, y, _ in used)
    total = sum(times)
    row = {"name": name, "step_s": statistics.median(times), "computed_tok_s": computed / total,
           "real_tok_s": real / total, "padding": 1 - real / computed,
           "mfu": flops / total / 1e9 / peak}
    print(f"{name:<34} {row['step_s']:>7.3f} s/step {row['computed_tok_s']:>9,.0f} computed "
          f"{row['real_tok_s']:>9,.0f} real tok/s  padding {row['padding']:>5.1%}  "
          f"MFU {row['mfu']:>5.1%}")
    return row


def batch(examples: list[tuple], rows: list[int], pad_id: int) -> tuple:
    """(inputs, targets, real tokens) for the given examples."""
    x, y, _ = collate(examples, rows, pad_id)
    return x, y, sum(len(examples[i][0]) for i in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=20_000, help="conversations to tokenize")
    ap.add_argument("--persona", default="guppy")
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = args.device
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {dev}")

    peak = matmul_peak(torch.float32, dev)
    print(f"matmul peak fp32: {peak:,.0f} GFLOP/s", end="")
    if args.bf16 or dev == "cuda":
        print(f"   bf16: {matmul_peak(torch.bfloat16, dev):,.0f} GFLOP/s", end="")
    print()

    splits = data.compose(persona.load(args.persona), data.DataConfig(n=args.n, seed=0))
    convs = splits["train"]
    tok = train_tokenizer(chat_texts(convs), 4096, topics_of(convs))
    examples = encode_examples(tok, convs, 256)
    used_ids = {i for ids, *_ in examples for i in ids}
    unused = set(range(tok.vocab_size)) - used_ids
    n_bytes = sum(1 for i in unused if i < 259)
    print(f"vocabulary: 4,096 asked, {tok.vocab_size:,} kept; {len(unused):,} rows unused here: "
          f"{n_bytes} byte tokens (kept for unseen characters), {len(unused) - n_bytes} merges")

    # the anchor: vocab 4096, 32 random conversations padded to the longest, full head
    rng = random.Random(0)
    anchor_batches = []
    for _ in range(args.steps + 1):
        pick = rng.sample(range(len(examples)), 32)
        anchor_batches.append(batch(examples, pick, tok.end_id))
    # GuppyLM: bucketed batches of about batch_tokens tokens
    ours = [batch(examples, b, tok.end_id)
            for b in make_batches(examples, args.batch_tokens, seed=0)[: args.steps + 1]]

    anchor_cfg = GPTConfig(**{**vars(PRESETS["guppy-9m"]), "vocab_size": 4096})
    our_cfg = GPTConfig(**{**vars(PRESETS["guppy-9m"]), "vocab_size": tok.vocab_size})
    torch.manual_seed(0)
    anchor_model = GPT(anchor_cfg).to(dev)
    print(f"\nguppy-9m: {anchor_model.num_params():,} parameters at vocab 4,096; "
          f"{GPT(our_cfg).num_params():,} at {tok.vocab_size:,}")
    rows = [report("anchor-like (batch 32, padded)",
                   time_steps(anchor_model, anchor_batches, anchor_loss, args.steps, dev),
                   anchor_batches, anchor_cfg, peak, lambda x, y: x.numel())]

    def ours_loss(model, x, y):
        return model(x, y)

    def head(x, y):
        return int((y != IGNORE).sum())

    model = GPT(our_cfg).to(dev)
    rows.append(report("guppylm fp32 (bucketed, masked head)",
                       time_steps(model, ours, ours_loss, args.steps, dev), ours, our_cfg, peak,
                       head))
    if args.bf16:
        rows.append(report("guppylm bf16 autocast",
                           time_steps(model, ours, ours_loss, args.steps, dev, torch.bfloat16),
                           ours, our_cfg, peak, head))
    if args.compile:
        t = time.perf_counter()
        compiled = torch.compile(model)
        time_steps(compiled, ours, ours_loss, 1, dev)
        print(f"torch.compile: {time.perf_counter() - t:.0f} s to compile and run 2 steps")
        rows.append(report("guppylm fp32 + torch.compile",
                           time_steps(compiled, ours, ours_loss, args.steps, dev), ours, our_cfg,
                           peak, head))
    base = rows[0]["real_tok_s"]
    for row in rows[1:]:
        print(f"{row['name']}: {row['real_tok_s'] / base:.2f}x the anchor's real tokens/s")

    # generation: 100 new tokens (never stopping early) after a short prompt and after a
    # chat history of 100 tokens; untrained weights, since speed does not depend on them
    history = [i for ids, *_ in examples[:20] for i in ids][:100]
    sampling = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=100, seed=0)
    for preset in ("guppy-9m", "guppy-2m", "guppy-1m"):
        cfg = GPTConfig(**{**vars(PRESETS[preset]), "vocab_size": tok.vocab_size})
        gen_model = GPT(cfg).to(dev).eval()
        for prompt in (history[:20], history):
            speeds = {}
            for name, fn in (("kv cache", stream), ("recompute", stream_without_cache)):
                best = 0.0
                for _ in range(3):
                    t = time.perf_counter()
                    n = len(list(fn(gen_model, prompt, sampling)))
                    best = max(best, n / (time.perf_counter() - t))
                speeds[name] = best
            ratio = speeds["kv cache"] / speeds["recompute"]
            print(f"generation {preset}, {len(prompt):>3}-token prompt: "
                  f"{speeds['kv cache']:>5,.0f} tokens/s with the KV cache, "
                  f"{speeds['recompute']:>5,.0f} recomputing ({ratio:.1f}x)")


if __name__ == "__main__":
    main()
