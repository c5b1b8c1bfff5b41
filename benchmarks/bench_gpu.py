"""`guppy run` on this machine's accelerator, timed stage by stage: data -> training for a
given number of seconds -> `guppy eval`.

    PYTHONPATH=. python benchmarks/bench_gpu.py [--seconds 60] [--device auto] [--out DIR]
                                                [--preset P] [--batch-tokens N] [--lr LR]

Made for a machine with a GPU where torch, tokenizers, safetensors, tqdm and matplotlib are
installed and nothing can be downloaded: it runs from the checkout (benchmarks/bench_gpu.sh).
Uses the defaults `guppy run` picks for the device (guppylm/devices.py; the flags override
them). Prints the device, the matmul peak of its training number format measured now, each
stage's wall time, training tokens/s and model FLOP utilisation (MFU: achieved FLOP/s over
that peak), and eval's pass rates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from bench_train import matmul_peak, step_flops  # noqa: E402
from machine import cpu_name  # noqa: E402

from guppylm import data, persona  # noqa: E402
from guppylm.batching import IGNORE, BatchStream, encode_examples  # noqa: E402
from guppylm.devices import amp_dtype, detect  # noqa: E402
from guppylm.evaluate import evaluate_run, format_table  # noqa: E402
from guppylm.model import PRESETS, GPTConfig  # noqa: E402
from guppylm.pipeline import run_config  # noqa: E402
from guppylm.tokenizer import Tokenizer  # noqa: E402
from guppylm.train import train  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def flops_per_real_token(run: Path, cfg, sample: int = 200) -> float:
    """Training FLOPs per real (unpadded) token, averaged over the first `sample` batches of
    the run's own order: the matmuls, attention over each batch's length, and the output
    layer where there is a target (bench_train.step_flops)."""
    tok = Tokenizer.load(run / "tokenizer.json")
    model_cfg = GPTConfig(**{**vars(PRESETS[cfg.preset]), "vocab_size": tok.vocab_size})
    examples = encode_examples(tok, data.read_split(Path(cfg.data), "train"), model_cfg.context)
    stream = BatchStream(examples, cfg.batch_tokens, cfg.seed, tok.end_id)
    flops = real = 0
    for step in range(min(sample, stream.per_epoch)):
        x, y, _, n = stream.get(step)
        flops += step_flops(model_cfg, x.shape[0], x.shape[1], int((y != IGNORE).sum()))
        real += n
    return flops / real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="training time")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path("/tmp/guppy-bench"))
    ap.add_argument("--preset")
    ap.add_argument("--batch-tokens", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--n", type=int, default=data.DataConfig.n, help="conversations")
    args = ap.parse_args()
    acc = detect(args.device)
    overrides = {k: v for k, v in (("preset", args.preset), ("batch_tokens", args.batch_tokens),
                                   ("lr", args.lr)) if v is not None}
    cfg = run_config(acc, data=str(args.out / "data"), run=str(args.out / "run"),
                     minutes=args.seconds / 60, device=args.device, **overrides)
    dtype = amp_dtype(acc) if cfg.dtype == "auto" else cfg.dtype
    device = "cuda" if acc.kind == "cuda" else acc.kind
    print(f"device: {acc.name or cpu_name()} ({acc.kind}"
          + (f", compute capability {acc.capability[0]}.{acc.capability[1]}, "
             f"{acc.memory_gib:.0f} GiB" if acc.kind == "cuda" else "")
          + f"), torch {torch.__version__}")
    peak = matmul_peak(DTYPES[dtype], device)
    print(f"matmul peak in {dtype}: {peak / 1000:,.1f} TFLOP/s")
    print(f"config: {cfg.preset}, {cfg.batch_tokens:,} tokens a batch, lr {cfg.lr:g}, {dtype}, "
          f"{args.seconds:g} s of training")

    times = {}
    t = time.perf_counter()
    p = persona.load("guppy")
    dcfg = data.DataConfig(n=args.n)
    data.write(data.compose(p, dcfg), p, dcfg, Path(cfg.data))
    times["data"] = time.perf_counter() - t
    t = time.perf_counter()
    train(cfg, overwrite=True, quiet=True)
    times["training (tokenizer included)"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics = evaluate_run(Path(cfg.run), quiet=True)
    times["eval"] = time.perf_counter() - t

    rows = [json.loads(line) for line in (Path(cfg.run) / "metrics.jsonl").open()]
    last = [r for r in rows if "real_tokens_per_s" in r][-1]
    achieved = last["real_tokens_per_s"] * flops_per_real_token(Path(cfg.run), cfg)
    print(f"\ntraining: {last['step']:,} steps, {last['real_tokens_per_s']:,} real tokens/s "
          f"({last['tokens_per_s']:,} with padding), {achieved / 1e12:.2f} TFLOP/s, "
          f"MFU {achieved / (peak * 1e9):.1%}")
    for stage, seconds in times.items():
        print(f"  {stage:<30} {seconds:7.1f} s")
    print(f"  {'all':<30} {sum(times.values()):7.1f} s\n")
    print(format_table([metrics]))


if __name__ == "__main__":
    main()
