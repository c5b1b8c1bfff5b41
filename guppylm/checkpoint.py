"""Saving and loading a run folder: weights, checkpoints and config.

Every file is written atomically (atomic.py), so a crash never leaves a corrupt one.
Weights are safetensors and config is JSON: nothing here ever unpickles anything.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from guppylm.atomic import atomic_write
from guppylm.errors import GuppyError
from guppylm.model import GPT, GPTConfig
from guppylm.tokenizer import Tokenizer

RUN_FILES = ("config.json", "tokenizer.json", "model.safetensors")  # what chatting needs


# ----------------------------------------------------------------------------- saving

def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict) -> None:
    """Write tensors and JSON-able metadata to a safetensors file, atomically."""
    def write(tmp: Path) -> None:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in metadata.items()})
        os.chmod(tmp, 0o644)  # safetensors makes files only their owner can read

    atomic_write(path, write)


def model_weights(model: GPT) -> dict[str, torch.Tensor]:
    """The state dict without the tied head (it is the token embedding)."""
    return {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}


def save_model(run: Path, model: GPT, metadata: dict) -> None:
    save_safetensors(model_weights(model), run / "model.safetensors", metadata)


def save_checkpoint(run: Path, model: GPT, opt: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, metadata: dict) -> None:
    """Everything `--resume` needs: weights, optimizer moments, the fp16 loss scale, the RNG
    and `metadata` (JSON values: the step, the schedule, ...)."""
    tensors = {f"model.{k}": v for k, v in model_weights(model).items()}
    for i, p in enumerate(model.parameters()):
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"opt.{i}.{key}"] = state[key]
    tensors["rng.torch"] = torch.get_rng_state()
    opt_steps = [float(opt.state[p]["step"]) for p in model.parameters() if p in opt.state]
    save_safetensors(tensors, run / "checkpoint.safetensors",
                     {**metadata, "opt_steps": opt_steps, "scaler": scaler.state_dict()})


def load_checkpoint(run: Path, model: GPT, opt: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler) -> dict:
    """Restore weights, optimizer moments, loss scale and RNG; return the metadata."""
    path = run / "checkpoint.safetensors"
    if not path.is_file():
        raise GuppyError(f"{path}: missing; nothing to resume, start without --resume")
    with safe_open(str(path), "pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
                          strict=False)
    for i, p in enumerate(model.parameters()):
        if f"opt.{i}.exp_avg" in tensors:
            opt.state[p] = {"step": torch.tensor(meta["opt_steps"][i]),
                            "exp_avg": tensors[f"opt.{i}.exp_avg"].to(p.device),
                            "exp_avg_sq": tensors[f"opt.{i}.exp_avg_sq"].to(p.device)}
    if meta.get("scaler"):  # empty unless the run trains in fp16
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    return meta


def write_config(run: Path, model_cfg: GPTConfig, train_cfg: object, extra: dict) -> None:
    """config.json: the model's shape, the training config (a dataclass) and extras."""
    config = {"model": asdict(model_cfg), "train": asdict(train_cfg), **extra}
    atomic_write(run / "config.json", json.dumps(config, indent=2) + "\n")


# ----------------------------------------------------------------------------- loading

def read_config(run: Path) -> dict:
    path = run / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GuppyError(f"{path}: missing; train a model with `guppy train --run {run}` "
                         "(or `guppy run`)") from None
    except json.JSONDecodeError:
        raise GuppyError(f"{path}: not valid JSON; retrain with `guppy train`") from None


def load_run(run: Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer, dict]:
    """The trained model of a run folder (on `device`, in eval mode), its tokenizer and its
    config.json; every problem is a GuppyError that says how to fix it."""
    run = Path(run)
    if not run.is_dir():
        raise GuppyError(f"{run}: no such run folder; train one with `guppy run` "
                         f"or `guppy train --run {run}`")
    for name in RUN_FILES:
        if not (run / name).is_file():
            raise GuppyError(f"{run}: incomplete run folder ({name} missing); finish it with "
                             f"`guppy train --run {run} --resume` or retrain with `guppy run`")
    config = read_config(run)
    model = GPT(GPTConfig(**config["model"]))
    path = run / "model.safetensors"
    try:
        weights = load_file(str(path))
    except Exception as e:  # safetensors raises several types for a bad file
        why = str(e).splitlines()[0][:120]
        raise GuppyError(f"{path}: unreadable weights ({why}); retrain with "
                         "`guppy train`") from None
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError:  # a tensor of the wrong shape
        missing, unexpected = [], ["(shapes)"]
    if unexpected or set(missing) - {"lm_head.weight"}:  # the head is the tied embedding
        raise GuppyError(f"{path}: weights do not match config.json; retrain with "
                         "`guppy train`")
    model.lm_head.weight = model.wte.weight  # as in GPT.__init__: the head is the embedding
    tok = Tokenizer.load(run / "tokenizer.json")
    return model.to(device).eval(), tok, config
