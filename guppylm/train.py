"""The training loop: conversations in, a run folder with a trained model out.

    data/train.jsonl -> tokenizer -> length-bucketed batches -> AdamW steps -> runs/NAME/

- Loss is computed on the assistant's tokens only: the model learns to answer, not to
  imitate users.
- Batches group conversations of similar length, so almost no compute goes to padding.
- A checkpoint (weights, optimizer, schedule, RNG) is written atomically every few steps;
  `--resume` continues after a crash exactly as if nothing had happened.
- The same code runs on CPU, CUDA and Apple MPS, and under `torchrun` on many devices.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from guppylm import data as data_mod
from guppylm.batching import BatchStream, collate, encode_examples, make_batches
from guppylm.chat_format import chat_texts, topics_of
from guppylm.checkpoint import (
    load_checkpoint,
    model_weights,
    read_config,
    save_atomic,
    save_checkpoint,
    write_config,
    write_text_atomic,
)
from guppylm.errors import GuppyError
from guppylm.model import GPT, IGNORE, PRESETS, GPTConfig
from guppylm.tokenizer import Tokenizer, train_tokenizer


@dataclass
class TrainConfig:
    data: str = "data"
    run: str = "runs/guppy"
    preset: str = "guppy-9m"
    vocab_size: int = 4096
    steps: int = 2000  # total optimizer steps, unless `minutes` sets them
    minutes: float | None = None  # fit the run into this much wall time (measured at start)
    batch_tokens: int = 4096  # tokens per step, padding included (per device)
    lr: float = 2e-3
    topic_weight: float = 4.0  # loss weight of the token naming the topic (1 = like the rest)
    drop_history_topics: float = 0.5  # share of past assistant turns trained without topic
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * this
    warmup: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_tokens: int = 16_384  # validation tokens per periodic evaluation
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    compile: bool = False
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False


# ----------------------------------------------------------------------------- schedule

def lr_at(step: int, progress: float, cfg: TrainConfig) -> float:
    """Linear warmup over the first steps, then cosine decay to lr * min_lr_ratio as
    `progress` (the share of the run after warmup, in steps or in time) goes from 0 to 1."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, max(0.0, progress))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: GPT, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW, with weight decay on the weight matrices and embeddings only (as in GPT-2):
    decaying biases and LayerNorm gains just pulls them toward zero for no benefit."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


# ----------------------------------------------------------------------------- devices

def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GuppyError(f"--device {name}: unknown device; use auto, cpu, cuda or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GuppyError("--device cuda: no CUDA GPU is available here; use --device auto")
    return device


def autocast_dtype(device: torch.device, dtype: str) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if dtype == "fp32" or (dtype == "auto" and device.type != "cuda"):
        return None
    if dtype in ("auto", "bf16"):
        return torch.bfloat16
    if dtype == "fp16":
        return torch.float16
    raise GuppyError(f"--dtype {dtype}: unknown; use auto, fp32, bf16 or fp16")


# ----------------------------------------------------------------------------- run folder

def prepare_run_folder(cfg: TrainConfig) -> Path:
    run = Path(cfg.run)
    if cfg.resume:
        if not (run / "config.json").is_file():
            raise GuppyError(f"{run}: no run to resume; start it with `guppy train --run {run}`")
        return run
    if run.exists() and any(run.iterdir()):
        if not cfg.overwrite:
            raise GuppyError(f"{run}: already holds a run; pass --resume to continue it, "
                             "--overwrite to start over, or choose another --run")
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    return run


def model_config_for(cfg: TrainConfig, vocab_size: int) -> GPTConfig:
    if cfg.preset not in PRESETS:
        raise GuppyError(f"--preset {cfg.preset}: unknown; choose one of {', '.join(PRESETS)}")
    return GPTConfig(**{**asdict(PRESETS[cfg.preset]), "vocab_size": vocab_size})


def train_config_from(saved: dict, **overrides) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{**{k: v for k, v in saved.items() if k in known}, **overrides})


# ----------------------------------------------------------------------------- the loop

def train(cfg: TrainConfig) -> GPT:
    """Train (or resume) a model into the run folder `cfg.run`; return it."""
    rank, world = _distributed_setup()
    main_process = rank == 0
    device = pick_device(cfg.device)
    amp = autocast_dtype(device, cfg.dtype)
    if cfg.resume:
        saved = read_config(Path(cfg.run))
        cfg = train_config_from(saved["train"], resume=True, quiet=cfg.quiet,
                                device=cfg.device, minutes=None)
    train_convs = data_mod.read_split(Path(cfg.data), "train")
    val_convs = data_mod.read_split(Path(cfg.data), "val")
    model_config_for(cfg, cfg.vocab_size)  # an unknown preset fails before anything is written
    run = prepare_run_folder(cfg) if main_process else Path(cfg.run)
    _barrier(world)
    tok_path = run / "tokenizer.json"
    if main_process and not cfg.resume:  # one process trains the tokenizer, all load it
        train_tokenizer(chat_texts(train_convs), cfg.vocab_size,
                        topics_of(train_convs)).save(tok_path)
        for name in ("persona.toml", "persona.test.toml"):  # the run keeps its character
            if (Path(cfg.data) / name).is_file():
                shutil.copyfile(Path(cfg.data) / name, run / name)
    _barrier(world)
    tok = Tokenizer.load(tok_path)

    model_cfg = model_config_for(cfg, tok.vocab_size)
    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(device)
    opt = make_optimizer(model, cfg)
    examples = encode_examples(tok, train_convs, model_cfg.context,
                               cfg.drop_history_topics, cfg.seed)
    val_examples = encode_examples(tok, val_convs, model_cfg.context)
    stream = BatchStream(examples, cfg.batch_tokens, cfg.seed, tok.end_id, cfg.topic_weight)
    val_batches = _eval_batches(val_examples, cfg, tok.end_id)

    # A run is planned in steps, or (--minutes) in wall time: then the cosine follows the
    # clock, so the run uses its budget fully whatever the speed of the machine.
    step, total, elapsed_before, warm_s = 0, cfg.steps, 0.0, None
    budget = 0.97 * cfg.minutes * 60 if cfg.minutes else None
    if budget:
        total = 10**9  # until the time is up
    if cfg.resume:
        meta = load_checkpoint(run, model, opt)
        step, total = meta["step"], meta["total_steps"]
        elapsed_before, warm_s = meta.get("elapsed_s", 0.0), meta.get("warm_s")
        budget = meta.get("budget_s")
        _truncate_metrics(run / "metrics.jsonl", step)
    elif main_process:
        write_config(run, cfg, model_cfg, {"persona_name": _persona_name(Path(cfg.data)),
                                           "vocab_size": tok.vocab_size,
                                           "parameters": model.num_params(),
                                           "device": str(device)})
    if main_process and not cfg.quiet:
        print(f"training {cfg.preset} ({model.num_params() / 1e6:.2f}M parameters, vocabulary "
              f"{tok.vocab_size:,}) on {device} ({amp or torch.float32}), "
              f"{len(examples):,} conversations, {stream.per_epoch:,} batches an epoch"
              + (f", {world} processes" if world > 1 else "")
              + (f", for {budget / 60:.1f} minutes" if budget else ""))

    forward = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        ids = [device.index] if device.type == "cuda" else None
        forward = DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        forward = torch.compile(forward)

    def loss_of(x: torch.Tensor, y: torch.Tensor, net=forward,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            return net(x.to(device), y.to(device),
                       weights=None if weights is None else weights.to(device))

    def progress(elapsed: float) -> float:
        if budget is None:
            return (step - cfg.warmup) / max(1, total - cfg.warmup)
        return (elapsed - warm_s) / max(1e-9, budget - warm_s) if warm_s is not None else 0.0

    metrics = open(run / "metrics.jsonl", "a") if main_process else None
    bar = tqdm(total=None if budget else total, initial=step, unit="step", dynamic_ncols=True,
               disable=not main_process or cfg.quiet, mininterval=0.2 if _is_tty() else 5.0)
    start, tokens_done, real_done = time.perf_counter() - elapsed_before, 0, 0
    model.train()
    while step < total:
        x, y, weights, real = stream.get(step, rank, world)
        elapsed = time.perf_counter() - start
        for group in opt.param_groups:
            group["lr"] = lr_at(step, progress(elapsed), cfg)
        loss = loss_of(x, y, weights=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        tokens_done += x.numel() * world
        real_done += real * world
        elapsed = _agreed(time.perf_counter() - start, world, device)  # ranks stop together
        if warm_s is None and step >= cfg.warmup:
            warm_s = elapsed
        if budget and elapsed >= budget:
            total = step  # time is up: this is the last step
        if main_process:
            loss_value = loss.item()
            run_time = elapsed - elapsed_before
            bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{real_done / run_time:,.0f}",
                            **({"left": f"{max(0, budget - elapsed):.0f}s"} if budget else {}),
                            refresh=False)  # the bar redraws at its own pace
            bar.update(1)
            metrics.write(json.dumps({"step": step, "loss": round(loss_value, 4),
                                      "lr": opt.param_groups[0]["lr"],
                                      "tokens_per_s": round(tokens_done / run_time),
                                      "real_tokens_per_s": round(real_done / run_time),
                                      "elapsed_s": round(elapsed, 2)}) + "\n")
        if step % cfg.eval_every == 0 or step == total:
            val = evaluate(model, val_batches, loss_of)
            if main_process:
                metrics.write(json.dumps({"step": step, "val_loss": round(val, 4)}) + "\n")
                bar.write(f"step {step:>5}: train loss {loss.item():.3f}, val loss {val:.3f}")
        if main_process and (step % cfg.checkpoint_every == 0 or step == total):
            metrics.flush()
            save_checkpoint(run, model, opt, step, total, elapsed_s=elapsed, warm_s=warm_s,
                            budget_s=budget)
    bar.close()
    if main_process:
        metrics.close()
        save_atomic(model_weights(model), run / "model.safetensors",
                    {"steps": step, "preset": cfg.preset})
        from guppylm.plots import plot_loss
        plot_loss(run / "metrics.jsonl", run / "loss.png")
    _barrier(world)
    return model


def _is_tty() -> bool:
    return sys.stderr.isatty()


def _persona_name(data_dir: Path) -> str:
    try:
        return json.loads((data_dir / "meta.json").read_text())["persona"]
    except (OSError, ValueError, KeyError):
        return "guppy"


def _agreed(elapsed: float, world: int, device: torch.device) -> float:
    """The largest elapsed time over all ranks, so that a time budget ends them together."""
    if world == 1:
        return elapsed
    t = torch.tensor([elapsed], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


@torch.no_grad()
def evaluate(model: GPT, batches: list[tuple], loss_of) -> float:
    """Mean loss over the assistant tokens of fixed validation batches."""
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        n = int((y != IGNORE).sum())
        total += loss_of(x, y, model).item() * n
        count += n
    model.train()
    return total / max(1, count)


def _eval_batches(examples: list[tuple], cfg: TrainConfig, pad_id: int) -> list[tuple]:
    batches = make_batches(examples, cfg.batch_tokens, seed=12345)
    picked, tokens = [], 0
    for batch in batches:
        if tokens >= cfg.eval_tokens:
            break
        x, y, _ = collate(examples, batch, pad_id)  # validation loss is unweighted
        picked.append((x, y))
        tokens += x.numel()
    return picked


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from."""
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if json.loads(ln)["step"] <= step]
        write_text_atomic(path, "".join(ln + "\n" for ln in lines))


def _distributed_setup() -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()
