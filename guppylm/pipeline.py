"""`guppy run`: the whole pipeline in one command.

    persona -> data/ -> tokenizer + training (time budget) -> sample exchanges

The defaults below were chosen by measurement on a 2-core laptop-class CPU (see
docs/benchmarks.md): the preset that gives the best held-out replies in the budget.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from guppylm import data, persona
from guppylm.chat import Guppy
from guppylm.chat_format import turns

RUN_DEFAULTS = {"preset": "guppy-1m", "minutes": 10.0, "batch_tokens": 1024, "lr": 4e-3}
SAMPLES = 8


def run_pipeline(args: argparse.Namespace) -> None:
    from guppylm.cli import _train_config
    from guppylm.train import train

    start = time.perf_counter()
    p = persona.load(args.persona)
    cfg = data.DataConfig(n=args.n, seed=args.seed)
    splits = data.generate(p, cfg)
    data.write(splits, p, cfg, Path(args.data))
    print(f"[1/4] data: {sum(len(s) for s in splits.values()):,} conversations of {p.name} "
          f"in {args.data}/ ({time.perf_counter() - start:.0f} s)")

    overrides = {k: v for k, v in RUN_DEFAULTS.items() if getattr(args, k, None) is None}
    if args.steps is not None:
        overrides.pop("minutes", None)
    train_cfg = _train_config(args, overwrite=True, **overrides)
    print(f"[2/4] training {train_cfg.preset} into {train_cfg.run}/"
          + (f" for about {train_cfg.minutes:g} minutes" if train_cfg.minutes else ""))
    train(train_cfg)

    print("[3/4] sample exchanges (prompts phrased as training never saw):")
    guppy = Guppy.load(train_cfg.run, seed=args.seed)
    for conv in splits["test"][:SAMPLES]:
        prompt = turns(conv)[0][0]
        print(f"  you: {prompt}\n  {p.name.lower()}: {guppy.reply(prompt)}\n")
    run = Path(train_cfg.run)
    if (run / "persona.test.toml").is_file():
        from guppylm.evaluate import evaluate_run, format_table

        print("[4/4] evaluation (hand-written persona test, held-out splits):")
        print(format_table([evaluate_run(run)]))
        print(f"full report: {run}/report.md")
    else:
        print(f"[4/4] no persona test beside {p.path}; skipping `guppy eval`")
    print(f"done in {(time.perf_counter() - start) / 60:.1f} minutes. "
          f"Talk to it: guppy chat --model {run}")
