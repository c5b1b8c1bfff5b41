"""The training loop: conversations in, a run folder with a trained model out.

    data/train.jsonl -> tokenizer -> length-bucketed batches -> AdamW steps -> runs/NAME/

- Loss is computed on the assistant's tokens only: the model learns to answer, not to
  imitate users.
- Batches group conversations of similar length, so almost no compute goes to padding.
- A run is planned in steps or in minutes (`Schedule`). A checkpoint (weights, optimizer,
  schedule, RNG) is written atomically every few steps; `train(cfg, resume=True)` (the CLI's
  `--resume`) continues after a crash exactly as if nothing had happened.
- The same code runs on CPU, CUDA and Apple MPS, and under `torchrun` on many devices.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from guppylm import data as data_mod
from guppylm import timeline
from guppylm.atomic import atomic_write
from guppylm.batching import BatchStream, collate, encode_examples, make_batches
from guppylm.chat_format import chat_texts, topics_of
from guppylm.checkpoint import (
    load_checkpoint,
    read_config,
    save_checkpoint,
    save_model,
    write_config,
)
from guppylm.devices import amp_dtype, detect
from guppylm.errors import ConfigError, GuppyError
from guppylm.model import GPT, IGNORE, PRESETS, GPTConfig
from guppylm.plots import plot_loss
from guppylm.tokenizer import Tokenizer, train_tokenizer
from guppylm.train_config import DTYPES, TrainConfig

# A timed run spends this share of its minutes on training steps and leaves the rest for
# what follows the last step (validation, checkpoint, weights, plot): the whole run then
# ends within its minutes.
TRAINING_SHARE = 0.97
VALIDATION_SEED = 12345  # any fixed seed: every validation measures the same batches
READ_LOSSES_EVERY = 20  # steps whose losses are read from the device (and logged) at once


# ----------------------------------------------------------------------------- the loop

def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False,
          quiet: bool = False) -> GPT:
    """Train a model into the run folder `cfg.run`; return it.

    resume: continue the run in `cfg.run` from its last checkpoint, with the config it was
    started with (only `cfg.device` may differ). overwrite: replace a run already in
    `cfg.run`. quiet: no progress bar and no messages.
    """
    rank, world = _distributed_setup()
    main = rank == 0
    if resume:
        cfg = saved_config(Path(cfg.run), device=cfg.device)
    device = pick_device(cfg.device)
    amp = autocast_dtype(device, cfg.dtype)
    train_convs = data_mod.read_split(Path(cfg.data), "train")
    val_convs = data_mod.read_split(Path(cfg.data), "val")
    model_config_for(cfg.preset, cfg.vocab_size)  # a bad preset fails before anything is written
    run = Path(cfg.run)
    if main:
        prepare_run_folder(cfg, train_convs, resume, overwrite)
    _barrier(world)  # the tokenizer is written before the other processes read it
    tok = Tokenizer.load(run / "tokenizer.json")

    model_cfg = model_config_for(cfg.preset, tok.vocab_size)
    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(device)
    opt = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    examples = encode_examples(tok, train_convs, model_cfg.context,
                               cfg.drop_history_topics, cfg.seed)
    stream = BatchStream(examples, cfg.batch_tokens, cfg.seed, tok.end_id, cfg.topic_weight,
                         device)
    val_batches = validation_batches(encode_examples(tok, val_convs, model_cfg.context),
                                     cfg, tok.end_id)
    prompts = timeline.prompts_for(run, val_convs, resume)  # the learning timeline's questions
    if resume:
        saved = load_checkpoint(run, model, opt, scaler)
        step, elapsed, schedule = saved["step"], saved["elapsed_s"], Schedule(**saved["schedule"])
    else:
        step, elapsed, schedule = 0, 0.0, Schedule.plan(cfg)
        if main:
            write_config(run, model_cfg, replace(cfg, data=str(Path(cfg.data).resolve())),
                         {**data_record(Path(cfg.data)), "vocab_size": tok.vocab_size,
                          "parameters": model.num_params(), "device": str(device),
                          "timeline_prompts": prompts})
    log = Log(run if main else None, step, elapsed, schedule, show=main and not quiet)
    log.say(f"training {cfg.preset} ({model.num_params() / 1e6:.2f}M parameters, vocabulary "
            f"{tok.vocab_size:,}) on {device} ({amp or torch.float32}), {len(examples):,} "
            f"conversations, {stream.per_epoch:,} batches an epoch"
            + (f", {world} processes" if world > 1 else "")
            + (f", for {schedule.budget_s / 60:.1f} minutes" if schedule.budget_s else ""))

    forward = distributed_and_compiled(model, cfg.compile, world, device)
    start = time.perf_counter() - elapsed  # a resumed run's clock goes on from its checkpoint
    model.train()
    while not schedule.finished(step, elapsed):
        x, y, weights, real = stream.get(step, rank, world)
        lr = schedule.lr_at(step, elapsed)
        loss = optimizer_step(forward, opt, scaler, lr, cfg.grad_clip, amp, x, y, weights)
        step += 1
        elapsed = _agreed(time.perf_counter() - start, world, device)  # ranks stop together
        schedule.record(step, elapsed)
        last = schedule.finished(step, elapsed)
        log.step(step, loss, lr, x.numel() * world, real * world, elapsed)
        if main and (step % cfg.eval_every == 0 or last):
            log.validation(step, mean_loss(model, val_batches, amp)[0])
            if timeline.is_due(step, cfg.eval_every, last):
                log.replies(step, timeline.ask(model, tok, prompts))
        if main and (step % cfg.checkpoint_every == 0 or last):
            log.flush()
            save_checkpoint(run, model, opt, scaler, {"step": step, "elapsed_s": elapsed,
                                                      "schedule": asdict(schedule)})
    log.close()
    if main:
        save_model(run, model, {"steps": step, "preset": cfg.preset})
        plot_loss(run / "metrics.jsonl", run / "loss.png")
    _barrier(world)
    return model


def optimizer_step(forward: torch.nn.Module, opt: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, lr: float, grad_clip: float,
                   amp: torch.dtype | None, x: torch.Tensor, y: torch.Tensor,
                   weights: torch.Tensor) -> torch.Tensor:
    """One AdamW step on one batch at learning rate `lr`; returns the batch's loss.

    In fp16 the scaler multiplies the loss before backward, so that small gradients do not
    underflow to zero, divides them back before clipping, and skips any step whose
    gradients overflowed (lowering the scale for the next). Otherwise it does nothing.
    """
    for group in opt.param_groups:
        group["lr"] = lr
    with autocast(x.device, amp):
        loss = forward(x, y, weights=weights)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(forward.parameters(), grad_clip)
    scaler.step(opt)
    scaler.update()
    return loss


@torch.no_grad()
def mean_loss(model: GPT, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
              amp: torch.dtype | None = None) -> tuple[float, int]:
    """(mean loss per assistant token, number of assistant tokens) over batches of (inputs,
    targets). Each batch's mean counts by its number of targets, so every token counts
    alike however the batches are cut. Unweighted: the topic weight is for training only.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for x, y in batches:
        n = int((y != IGNORE).sum())
        if n:
            with autocast(device, amp):
                total += model(x.to(device), y.to(device)).item() * n
            count += n
    model.train(was_training)
    return total / max(1, count), count


# ----------------------------------------------------------------------------- schedule

@dataclass
class Schedule:
    """When the run ends, and the learning rate on the way there: linear warmup over the
    first steps, then cosine decay to `min_lr`.

    A run is planned in steps, or in seconds: then the cosine follows the clock instead of
    the step count, so the run fills its time whatever the speed of the machine. Each
    checkpoint saves the schedule and a resumed run continues it, so the curve goes on as if
    nothing had happened (and a timed run keeps the time it had left).
    """

    lr: float
    min_lr: float
    warmup: int  # steps
    total_steps: int | None = None  # planned in steps ...
    budget_s: float | None = None  # ... or in seconds of training
    warm_s: float | None = None  # a timed run: when warmup ended, where the cosine starts

    @classmethod
    def plan(cls, cfg: TrainConfig) -> Schedule:
        lrs = {"lr": cfg.lr, "min_lr": cfg.lr * cfg.min_lr_ratio, "warmup": cfg.warmup}
        if cfg.minutes:
            return cls(**lrs, budget_s=TRAINING_SHARE * cfg.minutes * 60)
        return cls(**lrs, total_steps=cfg.steps)

    def lr_at(self, step: int, elapsed: float) -> float:
        """The learning rate of step `step` (from 0), `elapsed` seconds into the run."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = min(1.0, max(0.0, self.progress(step, elapsed)))
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))

    def progress(self, step: int, elapsed: float) -> float:
        """How far the cosine has gone: 0 at the end of warmup, 1 at the end of the run."""
        if self.budget_s is None:
            return (step - self.warmup) / max(1, self.total_steps - self.warmup)
        if self.warm_s is None:
            return 0.0
        return (elapsed - self.warm_s) / max(1e-9, self.budget_s - self.warm_s)

    def record(self, step: int, elapsed: float) -> None:
        """Note that `step` steps took `elapsed` seconds: a timed run keeps when warmup ended."""
        if self.budget_s is not None and self.warm_s is None and step >= self.warmup:
            self.warm_s = elapsed

    def finished(self, step: int, elapsed: float) -> bool:
        if self.budget_s is None:
            return step >= self.total_steps
        return elapsed >= self.budget_s


def make_optimizer(model: GPT, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW, with weight decay on the weight matrices and embeddings only (as in GPT-2):
    decaying biases and LayerNorm gains just pulls them toward zero for no benefit."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # beta2 0.95 rather than PyTorch's 0.999, as in GPT-3 and nanoGPT: a shorter average of
    # squared gradients adapts sooner, which keeps high learning rates stable. On a GPU, the
    # fused kernel updates every parameter in one launch instead of several per tensor.
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused or None)


# ----------------------------------------------------------------------------- logging

class Log:
    """What the first process shows and keeps: a tqdm bar (loss, real tokens per second,
    and the time left of a timed run) and metrics.jsonl in the run folder, one JSON object
    a line: each step's loss and learning rate, each validation's loss, and the replies of
    the learning timeline (timeline.py).

    With `run` None (the other processes of a distributed run) it keeps nothing.
    """

    def __init__(self, run: Path | None, step: int, elapsed: float, schedule: Schedule,
                 show: bool):
        self.metrics = None
        if run is not None:
            _drop_lines_after(run / "metrics.jsonl", step)  # a resumed run logs each step once
            self.metrics = open(run / "metrics.jsonl", "a")
        self.show, self.budget_s = show, schedule.budget_s
        # on a terminal the bar redraws often; in a log file each redraw is a new line
        self.bar = tqdm(total=schedule.total_steps, initial=step, unit="step", disable=not show,
                        dynamic_ncols=True, mininterval=0.2 if sys.stderr.isatty() else 5.0)
        self.since, self.tokens, self.real_tokens, self.loss = elapsed, 0, 0, math.nan
        self.unread: list[tuple] = []  # steps whose loss is not read from the device yet

    def say(self, text: str) -> None:
        if self.show:
            self.bar.write(text)

    def step(self, step: int, loss: torch.Tensor, lr: float, tokens: int, real_tokens: int,
             elapsed: float) -> None:
        """Count a step of `tokens` (`real_tokens` of them not padding). Its loss is read
        later, with others (`_read_losses`)."""
        if self.metrics is not None:
            self.unread.append((step, loss.detach(), lr, tokens, real_tokens, elapsed))
            if len(self.unread) >= READ_LOSSES_EVERY:
                self._read_losses()

    def _read_losses(self) -> None:
        """Log the steps whose losses are still on the device. Reading a loss makes the host
        wait until the device has computed it; read one at a time, a GPU would idle between
        steps while the host prepares the next. Read in groups, the GPU works ahead."""
        if not self.unread:
            return
        losses = torch.stack([row[1] for row in self.unread]).tolist()  # one wait for all
        for (step, _, lr, tokens, real_tokens, elapsed), loss in zip(self.unread, losses,
                                                                      strict=True):
            self.loss = loss
            self.tokens += tokens
            self.real_tokens += real_tokens
            seconds = max(1e-9, elapsed - self.since)  # this process's own time
            self._write({"step": step, "loss": round(loss, 4), "lr": lr,
                         "tokens_per_s": round(self.tokens / seconds),
                         "real_tokens_per_s": round(self.real_tokens / seconds),
                         "elapsed_s": round(elapsed, 2)})
        left = {"left": f"{max(0, self.budget_s - elapsed):.0f}s"} if self.budget_s else {}
        self.bar.set_postfix(loss=f"{self.loss:.3f}", tok_s=f"{self.real_tokens / seconds:,.0f}",
                             **left, refresh=False)  # the bar redraws at its own pace
        self.bar.update(len(losses))
        self.unread = []

    def validation(self, step: int, val_loss: float) -> None:
        self._read_losses()  # the train loss shown beside it is this step's
        self._write({"step": step, "val_loss": round(val_loss, 4)})
        self.say(f"step {step:>5}: train loss {self.loss:.3f}, val loss {val_loss:.3f}")

    def replies(self, step: int, answers: list[dict]) -> None:
        """Keep the replies to the learning timeline's prompts (timeline.py); show one."""
        if answers:
            self._write({"step": step, "timeline": answers})
            self.say(f"{'':13}you: {answers[0]['prompt']}  ->  {timeline.shown(answers[0])}")

    def _write(self, row: dict) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps(row) + "\n")

    def flush(self) -> None:
        self._read_losses()
        if self.metrics is not None:
            self.metrics.flush()

    def close(self) -> None:
        self._read_losses()
        self.bar.close()
        if self.metrics is not None:
            self.metrics.close()


def _drop_lines_after(metrics: Path, step: int) -> None:
    """Drop the metric lines written after the checkpoint a run resumes from (and a last
    line that a crash cut short)."""
    if metrics.is_file():
        lines = [ln for ln in metrics.read_text().splitlines() if _step_of(ln) <= step]
        atomic_write(metrics, "".join(ln + "\n" for ln in lines))


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError):
        return math.inf


# ----------------------------------------------------------------------------- run folder

def prepare_run_folder(cfg: TrainConfig, train_convs: list[dict], resume: bool,
                       overwrite: bool) -> None:
    """Make `cfg.run` ready to train in. To resume, the run must be there. A new run gets
    an empty folder (an old run in it is replaced only with `overwrite`), the tokenizer,
    trained on `train_convs`, and a copy of the persona files: the run keeps its character.
    """
    run = Path(cfg.run)
    if resume:
        if not (run / "config.json").is_file():
            raise GuppyError(f"{run}: no run to resume; start it with `guppy train --run {run}`")
        return
    if run.exists() and any(run.iterdir()):
        if not overwrite:
            raise GuppyError(f"{run}: already holds a run; pass --resume to continue it, "
                             "--overwrite to start over, or choose another --run")
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(chat_texts(train_convs), cfg.vocab_size, topics_of(train_convs))
    atomic_write(run / "tokenizer.json", tok.save)
    for name in ("persona.toml", "persona.test.toml"):
        if (Path(cfg.data) / name).is_file():
            atomic_write(run / name, (Path(cfg.data) / name).read_bytes())


def saved_config(run: Path, device: str) -> TrainConfig:
    """The config a run was started with (its config.json), to resume it in `run` on
    `device`. Keys that are no TrainConfig field (from older versions) are ignored."""
    saved = read_config(run)["train"]
    known = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in saved.items() if k in known}
    return TrainConfig(**{**given, "run": str(run), "device": device})


def data_record(data_dir: Path) -> dict:
    """What config.json keeps of the data: the persona's name, and the DataConfig the data
    was composed with, so that `guppy eval` can compose the same splits again when the data
    folder is gone (the run keeps a copy of the persona)."""
    try:
        meta = json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"persona_name": "guppy"}
    return {"persona_name": meta.get("persona", "guppy"), "data": meta.get("config")}


def model_config_for(preset: str, vocab_size: int) -> GPTConfig:
    if preset not in PRESETS:
        raise ConfigError("TrainConfig", "preset", preset,
                          f"unknown; choose one of {', '.join(PRESETS)}")
    return GPTConfig(**{**asdict(PRESETS[preset]), "vocab_size": vocab_size})


def validation_batches(examples: list[tuple], cfg: TrainConfig, pad_id: int) -> list[tuple]:
    """The first batches of a fixed order, `cfg.eval_tokens` tokens in all."""
    picked, tokens = [], 0
    for batch in make_batches(examples, cfg.batch_tokens, seed=VALIDATION_SEED):
        if tokens >= cfg.eval_tokens:
            break
        x, y, _ = collate(examples, batch, pad_id)
        picked.append((x, y))
        tokens += x.numel()
    return picked


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
        raise ConfigError("TrainConfig", "device", name,
                          "unknown device; use auto, cpu, cuda or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("TrainConfig", "device", name,
                          "no CUDA GPU is available here; use auto or cpu")
    return device


def autocast_dtype(device: torch.device, dtype: str) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. `auto` is the format the device is fast
    at (devices.amp_dtype): bf16 on recent GPUs, fp16 on the T4 and V100, else fp32."""
    if dtype not in DTYPES:
        raise ConfigError("TrainConfig", "dtype", dtype, f"unknown; use {', '.join(DTYPES)}")
    if dtype == "auto":
        dtype = amp_dtype(detect(str(device)))
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]


def autocast(device: torch.device, amp: torch.dtype | None) -> torch.autocast:
    """Mixed precision in `amp`, or plain fp32 where it is None."""
    return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)


def distributed_and_compiled(model: GPT, compile: bool, world: int,
                             device: torch.device) -> torch.nn.Module:
    """What the training steps call: the model, wrapped in DistributedDataParallel (which
    averages gradients across processes) when there are several, and compiled if asked."""
    forward = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        ids = [device.index] if device.type == "cuda" else None
        forward = DistributedDataParallel(model, device_ids=ids)
    return torch.compile(forward) if compile else forward


def _distributed_setup() -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _agreed(elapsed: float, world: int, device: torch.device) -> float:
    """The largest elapsed time over all ranks, so that a time budget ends them together."""
    if world == 1:
        return elapsed
    t = torch.tensor([elapsed], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()
