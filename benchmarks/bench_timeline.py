"""What the learning timeline costs a training run (guppylm/timeline.py).

    python benchmarks/bench_timeline.py [--steps 5544] [--threads 2]

Times one `timeline.ask` (five prompts of Guppy's val split, greedy, at most 40 new tokens
each) against `guppy run`'s training step (guppy-1m, 1,024-token batches), interleaved so that
other load on the machine slows both alike. Then prices a `guppy run` of `--steps` steps with
a validation every 100: the prompts asked at doubling steps (what training does) and, for
comparison, at every validation. The model is untrained, and its output layer is kept from
choosing the end of a turn, so every reply runs to the 40-token limit: the worst case.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from machine import cpu_name  # benchmarks/machine.py

from guppylm import data, persona, timeline
from guppylm.batching import BatchStream, encode_examples
from guppylm.chat import Guppy
from guppylm.chat_format import chat_texts, topics_of
from guppylm.generate import SamplingConfig
from guppylm.model import GPT
from guppylm.pipeline import run_config
from guppylm.tokenizer import train_tokenizer
from guppylm.train import make_optimizer, model_config_for, optimizer_step

STEPS_TIMED = 20  # training steps per measurement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5544,
                        help="steps of the run to price (default: a 10-minute `guppy run` on "
                             "a 2-core AMD EPYC, docs/benchmarks.md)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = run_config()

    splits = data.compose(persona.load("guppy"), data.DataConfig())
    tok = train_tokenizer(chat_texts(splits["train"]), cfg.vocab_size, topics_of(splits["train"]))
    prompts = timeline.pick_prompts(splits["val"])
    torch.manual_seed(0)
    model = GPT(model_config_for(cfg.preset, tok.vocab_size))
    opt = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stream = BatchStream(encode_examples(tok, splits["train"], model.cfg.context),
                         cfg.batch_tokens, 0, tok.end_id, cfg.topic_weight)

    def train_steps(first: int) -> float:
        start = time.perf_counter()
        for step in range(first, first + STEPS_TIMED):
            x, y, w, _ = stream.get(step)
            optimizer_step(model, opt, scaler, 1e-4, cfg.grad_clip, None, x, y, w)
        return (time.perf_counter() - start) / STEPS_TIMED

    ends = torch.tensor([tok.end_id, tok.user_id, tok.assistant_id])

    def never_ending(module, inputs, logits):  # a forward hook on the output layer
        return logits.index_fill(-1, ends, float("-inf"))

    def ask(one_thread: bool = True) -> float:
        """Seconds for one ask (with all threads instead of ask's one: what that saves)."""
        hook = model.lm_head.register_forward_hook(never_ending)
        start = time.perf_counter()
        if one_thread:
            timeline.ask(model, tok, prompts)
        else:
            guppy = Guppy(model, tok, SamplingConfig(temperature=0, max_new_tokens=40))
            for prompt in prompts:
                guppy.respond([{"role": "user", "content": prompt}])
            model.train()
        seconds = time.perf_counter() - start
        hook.remove()
        return seconds

    train_steps(0), ask()  # warm up
    step_s, ask_s, threads_s = [], [], []
    for r in range(args.repeats):
        step_s.append(train_steps((r + 1) * STEPS_TIMED))
        ask_s.append(ask())
        threads_s.append(ask(one_thread=False))
    step, one = statistics.median(step_s), statistics.median(ask_s)

    validations = list(range(100, args.steps + 1, 100)) + ([args.steps] if args.steps % 100 else [])
    doubling = [s for s in validations if timeline.is_due(s, 100, s == args.steps)]
    budget = 60 * cfg.minutes
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores), {args.threads} threads, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    print(f"prompts: {prompts}")
    print(f"one ask ({len(prompts)} replies of {timeline.MAX_NEW_TOKENS} tokens): {one:.3f} s "
          f"= {one / step:.1f} training steps of {cfg.preset} ({step * 1000:.0f} ms each); "
          f"with {args.threads} threads instead of one: {statistics.median(threads_s):.3f} s "
          f"(medians of {args.repeats})")
    print(f"a {cfg.minutes:g}-minute `guppy run` of {args.steps:,} steps, validating every 100:")
    for label, asked in (("doubling steps (training)", doubling),
                         ("every validation", validations)):
        total = len(asked) * one
        print(f"  asked at {label:<26} {len(asked):>3} asks: {total:5.1f} s, "
              f"{total / budget:6.2%} of its {cfg.minutes:g} minutes")


if __name__ == "__main__":
    main()
