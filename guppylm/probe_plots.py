"""The pictures of `guppy inspect` (probe.py measures, this file draws), written with
matplotlib and no screen:

    attention.png  every layer's and head's attention over prompt and reply
    tokens.png     the reply, each token shaded by the probability the model gave it
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from guppylm.atomic import atomic_write  # noqa: E402
from guppylm.errors import GuppyError  # noqa: E402
from guppylm.probe import Inspection, label, percent, shorten  # noqa: E402

MAX_LABELS = 48  # tick labels per heatmap axis; beyond this every k-th token is labelled
TOKENS_PER_ROW = 8  # tokens.png: cells per row


def write_figures(seen: Inspection, out: Path) -> list[Path]:
    """attention.png and tokens.png in the folder `out` (made if missing)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where the folder should be, no permission, ...
        why = "a file, not a folder" if out.exists() else (e.strerror or str(e))
        raise GuppyError(f"{out}: cannot write pictures there ({why}); give --out a "
                         "folder") from None
    paths = [out / "attention.png", out / "tokens.png"]
    plot_attention(seen, paths[0])
    plot_tokens(seen, paths[1])
    return paths


def plot_attention(seen: Inspection, out: Path) -> None:
    """A grid of heatmaps, a row per layer and a column per head. In each, row i is the
    token being read at position i, and its colours how its attention is spread over the
    tokens up to it (each row sums to 1). An orange line separates prompt from reply."""
    weights = seen.attention.float().numpy()
    n_layer, n_head, T, _ = weights.shape
    labels = [shorten(label(t), 16) for t in seen.tokens]
    side = min(6.0, max(2.4, 0.16 * T))  # inches per heatmap: room for a label per token
    fig, axes = plt.subplots(n_layer, n_head, figsize=(n_head * side + 1.6, n_layer * side + 1),
                             squeeze=False, sharex=True, sharey=True, layout="constrained",
                             dpi=100)
    every = math.ceil(T / MAX_LABELS)
    ticks = list(range(0, T, every))
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer][head]
            image = ax.imshow(weights[layer, head], cmap="Blues", vmin=0, vmax=1,
                              interpolation="nearest")
            for edge in (ax.axhline, ax.axvline):
                edge(seen.n_prompt - 0.5, color="#ff7f0e", linewidth=0.8)
            ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=10)
            ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=7)
            ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=7)
            ax.tick_params(length=2, labelbottom=layer == n_layer - 1, labelleft=head == 0)
    fig.colorbar(image, ax=axes, shrink=min(0.6, 3 / n_layer + 0.2),
                 label="attention weight (each row sums to 1)")
    fig.suptitle(f"attention while reading \u201c{shorten(seen.prompt, 40)}\u201d and the "
                 "reply\nrow: the token reading; columns: what it reads; orange: prompt | reply",
                 fontsize=11)
    _save(fig, out)


def plot_tokens(seen: Inspection, out: Path) -> None:
    """The reply as a grid of cells, one per generated token in reading order, each shaded
    by the probability the model gave it: the darker, the less sure it was."""
    steps = seen.steps
    rows = max(1, math.ceil(len(steps) / TOKENS_PER_ROW))
    fig, ax = plt.subplots(figsize=(TOKENS_PER_ROW * 1.3 + 1.6, rows * 0.75 + 1.1), dpi=100,
                           layout="constrained")
    # dark orange for unlikely tokens, a pale one (never white) for certain ones
    cmap = ListedColormap(plt.get_cmap("Oranges_r")(range(0, 220)))
    for n, step in enumerate(steps):
        row, col = divmod(n, TOKENS_PER_ROW)
        p = step.chosen.prob
        ax.add_patch(Rectangle((col + 0.03, -row + 0.05), 0.94, 0.9, color=cmap(p)))
        ink = "white" if p < 0.45 else "#17323d"
        text = shorten(label(step.chosen.token), 16)
        ax.text(col + 0.5, -row + 0.58, text, ha="center", va="center",
                fontsize=11 if len(text) <= 11 else 8.5, color=ink)
        ax.text(col + 0.5, -row + 0.24, percent(p), ha="center", va="center", fontsize=8,
                color=ink)
    ax.set_xlim(0, TOKENS_PER_ROW)
    ax.set_ylim(-rows + 1, 1)
    ax.set_aspect("auto")
    ax.axis("off")
    how = "greedy" if seen.greedy else "sampled"
    ax.set_title(f"\u201c{shorten(seen.prompt, 60)}\u201d \u2192 the reply ({how}), token by "
                 "token: the darker, the less sure", fontsize=11, loc="left")
    scale = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1))
    bar = fig.colorbar(scale, ax=ax, fraction=0.04, pad=0.01)
    bar.set_label("probability", fontsize=9)
    _save(fig, out)


def _save(fig: plt.Figure, out: Path) -> None:
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
