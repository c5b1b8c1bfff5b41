"""`guppy run`: the whole pipeline in one call.

    persona -> data/ -> tokenizer + training (time budget) -> sample exchanges -> eval

`RUN_PRESET` is what `guppy run` changes in TrainConfig's defaults. It was chosen by
measurement on a 2-core laptop-class CPU (docs/benchmarks.md): the model size, batch and
learning rate that give the best held-out replies in ten minutes of training.
"""

from __future__ import annotations

import time
from pathlib import Path

from guppylm import data, persona
from guppylm.chat_format import turns
from guppylm.train_config import TrainConfig

RUN_PRESET = {"preset": "guppy-1m", "minutes": 10.0, "batch_tokens": 1024, "lr": 4e-3}
SAMPLES = 8  # sample exchanges shown after training


def run_config(**given) -> TrainConfig:
    """The TrainConfig of `guppy run`: TrainConfig's defaults, then RUN_PRESET, then `given`.
    A run given `steps` is planned in steps instead of RUN_PRESET's minutes."""
    chosen = {k: v for k, v in RUN_PRESET.items() if not (k == "minutes" and "steps" in given)}
    return TrainConfig(**{**chosen, **given})


def run_pipeline(persona_name: str, data_cfg: data.DataConfig, train_cfg: TrainConfig,
                 quiet: bool = False) -> Path:
    """Compose data from a persona (a built-in name or a .toml path) into `train_cfg.data`,
    train a model into `train_cfg.run` (replacing a run there), show a few exchanges on
    test prompts and evaluate it if the persona has a test; return the run folder."""
    # imported here, so that `guppy --help` can show RUN_PRESET without loading torch
    from guppylm.chat import Guppy
    from guppylm.evaluate import evaluate_run, format_table
    from guppylm.train import model_config_for, train

    start = time.perf_counter()
    model_config_for(train_cfg.preset, train_cfg.vocab_size)  # a bad preset fails first
    p = persona.load(persona_name)
    splits = data.compose(p, data_cfg)
    data.write(splits, p, data_cfg, Path(train_cfg.data))
    print(f"[1/4] data: {sum(len(s) for s in splits.values()):,} conversations of {p.name} "
          f"in {train_cfg.data}/ ({time.perf_counter() - start:.0f} s)")

    print(f"[2/4] training {train_cfg.preset} into {train_cfg.run}/"
          + (f" for about {train_cfg.minutes:g} minutes" if train_cfg.minutes else ""))
    train(train_cfg, overwrite=True, quiet=quiet)

    print("[3/4] sample exchanges (prompts phrased as training never saw):")
    guppy = Guppy.load(train_cfg.run, seed=train_cfg.seed)
    for conv in splits["test"][:SAMPLES]:
        prompt = turns(conv)[0][0]
        print(f"  you: {prompt}\n  {p.name.lower()}: {guppy.reply(prompt)}\n")
    run = Path(train_cfg.run)
    if (run / "persona.test.toml").is_file():
        print("[4/4] evaluation (hand-written persona test, held-out splits):")
        print(format_table([evaluate_run(run)]))
        print(f"full report: {run}/report.md")
    else:
        print(f"[4/4] no persona test beside {p.path}; skipping `guppy eval`")
    print(f"done in {(time.perf_counter() - start) / 60:.1f} minutes. "
          f"Talk to it: guppy chat --model {run}")
    return run
