"""Plots written into a run folder (matplotlib, no screen needed): the loss curves of
training, and the persona test's pass rates that `guppy eval` draws."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from guppylm.atomic import atomic_write  # noqa: E402


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
    save(fig, out)


def plot_rates(rates: dict[str, float], title: str, out: Path) -> None:
    """One horizontal bar per name (a topic, a style of prompt), from 0 to 1."""
    names = list(rates)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.22 * len(names) + 1)), dpi=110)
    ax.barh(names, [rates[n] for n in names], color="#3182bd")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_title(title)
    ax.tick_params(axis="y", labelsize=7 if len(names) > 20 else 9)
    ax.grid(axis="x", alpha=0.3)
    save(fig, out)


def save(fig: plt.Figure, out: Path) -> None:
    """Write a figure as PNG, atomically, and free it."""
    try:
        fig.tight_layout()
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def _smooth(values, weight: float = 0.9) -> list[float]:
    out, last = [], values[0]
    for v in values:
        last = weight * last + (1 - weight) * v
        out.append(last)
    return out
