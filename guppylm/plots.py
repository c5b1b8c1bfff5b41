"""Plots written into a run folder (matplotlib, no screen needed)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def plot_loss(metrics_path: Path, out: Path) -> None:
    """Training loss (smoothed) and validation loss against the step."""
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        steps, losses = zip(*train, strict=True)
        ax.plot(steps, losses, color="#9ecae1", linewidth=0.8, label="train (each step)")
        ax.plot(steps, _smooth(losses), color="#3182bd", linewidth=1.6, label="train (smoothed)")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", color="#e6550d", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens, nats)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)


def _smooth(values, weight: float = 0.9) -> list[float]:
    out, last = [], values[0]
    for v in values:
        last = weight * last + (1 - weight) * v
        out.append(last)
    return out
