"""What a training run is asked to do: `TrainConfig`, every setting with its default.

It lives apart from train.py so that the CLI can show these defaults in `--help` without
importing torch. What `guppy train` is asked to *do* with a run folder (resume it,
overwrite it, train quietly) is not configuration: those are arguments of `train()`.
"""

from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("auto", "fp32", "bf16", "fp16")  # auto: what the device is fast at (devices.py)


@dataclass
class TrainConfig:
    data: str = "data"  # the data folder (`guppy data`); config.json records it absolute
    run: str = "runs/guppy"  # the run folder to write
    preset: str = "guppy-9m"  # the model's size, a name in model.PRESETS
    vocab_size: int = 4096  # at most: the tokenizer never learns more than the data supports
    steps: int = 2000  # optimizer steps, unless `minutes` plans the run in time
    minutes: float | None = None  # train for this long; the learning rate follows the clock
    batch_tokens: int = 4096  # tokens per step, padding included (per device)
    lr: float = 2e-3
    topic_weight: float = 4.0  # loss weight of the token naming the topic (1 = like the rest)
    drop_history_topics: float = 0.5  # share of past assistant turns trained without topic
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * this
    warmup: int = 50  # steps of linear warmup
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100  # steps between validations
    eval_tokens: int = 16_384  # validation tokens per periodic evaluation
    checkpoint_every: int = 100  # steps between checkpoints
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    dtype: str = "auto"  # one of DTYPES
    compile: bool = False  # torch.compile the model
