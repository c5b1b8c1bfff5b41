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
from guppylm.devices import Accelerator, batch_tokens_for
from guppylm.train_config import TrainConfig

RUN_PRESET = {"preset": "guppy-1m", "minutes": 10.0, "batch_tokens": 1024, "lr": 4e-3}
# On a GPU: the seed's size, in batches sized to the GPU (devices.batch_tokens_for) and the
# number format it is fast at (devices.amp_dtype, through TrainConfig.dtype "auto").
# Not yet measured on a GPU (docs/benchmarks.md): benchmarks/bench_gpu.sh is the check.
GPU_RUN_PRESET = {"preset": "guppy-9m", "minutes": 5.0, "lr": 3e-3, "warmup": 100}
MPS_RUN_PRESET = {"preset": "guppy-2m", "minutes": 10.0, "batch_tokens": 2048, "lr": 4e-3}
SAMPLES = 8  # sample exchanges shown after training


def run_preset(acc: Accelerator | None = None) -> dict:
    """What `guppy run` changes in TrainConfig's defaults on this accelerator (None: a CPU)."""
    if acc is not None and acc.kind == "cuda":
        return {**GPU_RUN_PRESET, "batch_tokens": batch_tokens_for(acc)}
    if acc is not None and acc.kind == "mps":
        return MPS_RUN_PRESET
    return RUN_PRESET


def run_config(acc: Accelerator | None = None, **given) -> TrainConfig:
    """The TrainConfig of `guppy run` on `acc` (None: a CPU): TrainConfig's defaults, then
    the accelerator's preset, then `given`. A run given `steps` is planned in steps instead
    of the preset's minutes."""
    preset = run_preset(acc)
    chosen = {k: v for k, v in preset.items() if not (k == "minutes" and "steps" in given)}
    return TrainConfig(**{**chosen, **given})


def run_pipeline(persona_name: str, data_cfg: data.DataConfig, train_cfg: TrainConfig,
                 quiet: bool = False) -> Path:
    """Compose data from a persona (a built-in name or a .toml path) into `train_cfg.data`,
    train a model into `train_cfg.run` (replacing a run there), show a few exchanges on
    test prompts and evaluate it if the persona has a test; return the run folder."""
    # imported here, so that `guppy --help` can show RUN_PRESET without loading torch
    from guppylm import timeline
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
    run = Path(train_cfg.run)
    print("  how it learned to talk (the same questions, asked while it trained):")
    print("\n".join(timeline.lines(timeline.read(run / "metrics.jsonl"), p.name.lower())))

    print("[3/4] sample exchanges (prompts phrased as training never saw):")
    guppy = Guppy.load(train_cfg.run, seed=train_cfg.seed)
    for conv in splits["test"][:SAMPLES]:
        prompt = turns(conv)[0][0]
        print(f"  you: {prompt}\n  {p.name.lower()}: {guppy.reply(prompt)}\n")
    if (run / "persona.test.toml").is_file():
        print("[4/4] evaluation (hand-written persona test, held-out splits):")
        print(format_table([evaluate_run(run)]))
        print(f"full report: {run}/report.md")
    else:
        print(f"[4/4] no persona test beside {p.path}; skipping `guppy eval`")
    print(f"done in {(time.perf_counter() - start) / 60:.1f} minutes. "
          f"Talk to it: guppy chat --model {run}")
    return run
