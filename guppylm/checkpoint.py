"""Reading and writing a run folder: weights, checkpoints and config, all written
atomically (to a temporary name, then renamed) so a crash never leaves a corrupt file.
Weights are safetensors and config is JSON: nothing here ever unpickles anything."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from guppylm.errors import GuppyError
from guppylm.model import GPT, GPTConfig


def save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict) -> None:
    """Write a safetensors file under a temporary name, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
              metadata={k: json.dumps(v) for k, v in metadata.items()})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def model_weights(model: GPT) -> dict[str, torch.Tensor]:
    """The state dict without the tied head (it is the token embedding)."""
    return {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}


def save_checkpoint(run: Path, model: GPT, opt: torch.optim.Optimizer, step: int,
                    total: int, **extra) -> None:
    """Everything `--resume` needs; `extra` (JSON values) rides along in the metadata."""
    tensors = {f"model.{k}": v for k, v in model_weights(model).items()}
    for i, p in enumerate(model.parameters()):
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"opt.{i}.{key}"] = state[key]
    tensors["rng.torch"] = torch.get_rng_state()
    opt_steps = [float(opt.state[p]["step"]) for p in model.parameters() if p in opt.state]
    save_atomic(tensors, run / "checkpoint.safetensors",
                {"step": step, "total_steps": total, "opt_steps": opt_steps, **extra})


def load_checkpoint(run: Path, model: GPT, opt: torch.optim.Optimizer) -> dict:
    """Restore weights, optimizer moments and RNG; return the metadata (step, total_steps
    and what was saved with them)."""
    path = run / "checkpoint.safetensors"
    if not path.is_file():
        raise GuppyError(f"{path}: missing; nothing to resume, start without --resume")
    with safe_open(str(path), "pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
                          strict=False)
    params = list(model.parameters())
    for i, p in enumerate(params):
        if f"opt.{i}.exp_avg" in tensors:
            opt.state[p] = {"step": torch.tensor(meta["opt_steps"][i]),
                            "exp_avg": tensors[f"opt.{i}.exp_avg"].to(p.device),
                            "exp_avg_sq": tensors[f"opt.{i}.exp_avg_sq"].to(p.device)}
    torch.set_rng_state(tensors["rng.torch"])
    return meta


def write_config(run: Path, cfg, model_cfg: GPTConfig, extra: dict) -> None:
    """config.json: the model's shape, the training config (a dataclass) and extras."""
    config = {"model": asdict(model_cfg), "train": asdict(cfg), **extra}
    write_text_atomic(run / "config.json", json.dumps(config, indent=2) + "\n")


def read_config(run: Path) -> dict:
    path = run / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GuppyError(f"{path}: missing; train a model with `guppy train --run {run}` "
                         "(or `guppy run`)") from None
    except json.JSONDecodeError:
        raise GuppyError(f"{path}: not valid JSON; retrain with `guppy train`") from None
