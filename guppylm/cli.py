"""The `guppy` command: one subcommand per pipeline stage.

Exit status: 0 done, 1 a failure while working, 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from guppylm.errors import GuppyError


def cmd_data(args: argparse.Namespace) -> None:
    from guppylm import data, persona

    if args.action == "stats":
        print(data.format_stats(data.stats(Path(args.dir))))
        return
    p = persona.load(args.persona)
    cfg = data.DataConfig(n=args.n, seed=args.seed)
    start = time.perf_counter()
    splits = data.generate(p, cfg)
    data.write(splits, p, cfg, Path(args.out))
    counts = ", ".join(f"{len(splits[s]):,} {s}" for s in data.SPLITS)
    print(f"wrote {counts} conversations of {p.name} to {args.out}/ "
          f"in {time.perf_counter() - start:.1f} s")


def cmd_persona_check(args: argparse.Namespace) -> None:
    from guppylm import data, persona

    p = persona.load(args.file)
    n_prompts = sum(len(t.prompts) for t in p.topics)
    n_replies = sum(len(t.replies) + len(t.more) for t in p.topics)
    print(f"{p.path}: ok")
    print(f"  {p.name}: {p.description}")
    print(f"  voice: lowercase={str(p.lowercase).lower()}, max_words={p.max_words}")
    print(f"  {len(p.topics)} topics, {len(p.pools)} slot pools, "
          f"{n_prompts} prompt and {n_replies} reply templates")
    composer = data.Composer(p, data.DataConfig(seed=args.seed, multi_turn_share=0.5))
    print("\nsample conversations:")
    for _ in range(args.samples):
        conv = composer.conversation("train")
        print(f"  [{conv['topic']}]")
        for msg in conv["messages"]:
            who = "you" if msg["role"] == "user" else p.name.lower()
            print(f"    {who:>8}: {msg['content']}")


def cmd_train(args: argparse.Namespace) -> None:
    from guppylm.train import train

    train(_train_config(args))


def _train_config(args: argparse.Namespace, **overrides):
    from guppylm.train import TrainConfig

    given = {k: v for k, v in vars(args).items()
             if k in TrainConfig.__dataclass_fields__ and v is not None}
    return TrainConfig(**{**given, **overrides})


def _sampling(args: argparse.Namespace) -> dict:
    return {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "max_new_tokens": args.max_new_tokens, "seed": args.seed,
            "topic_temperature": args.topic_temperature}


def cmd_chat(args: argparse.Namespace) -> None:
    from guppylm.chat import Guppy

    guppy = Guppy.load(args.model, **_sampling(args))
    if args.prompt is not None:
        say(guppy, [{"role": "user", "content": args.prompt}], args.show_topic)
        return
    chat_loop(guppy, args.show_topic)


def chat_loop(guppy, show_topic: bool = False) -> None:
    """Stream replies, keep the history, /reset to forget, Ctrl-C or Ctrl-D to quit."""
    who = guppy.name.lower()
    print(f"chatting with {who} (/reset forgets the conversation; Ctrl-D or Ctrl-C quits)")
    history: list[dict] = []
    while True:
        try:
            text = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not text:
            continue
        if text.lower() == "/reset":
            history = []
            print("(forgotten)")
            continue
        history.append({"role": "user", "content": text})
        print(f"{who}> ", end="", flush=True)
        try:
            reply = say(guppy, history, show_topic)
        except KeyboardInterrupt:
            print()
            return
        history.append({"role": "assistant", "content": reply})


def say(guppy, messages: list[dict], show_topic: bool) -> str:
    """Print the reply to `messages` as it streams in; return its text."""
    text = ""
    for chunk in guppy.stream(messages):
        if chunk.topic and show_topic:
            print(f"[{chunk.topic}] ", end="", flush=True)
        print(chunk.text, end="", flush=True)
        text += chunk.text
    print()
    return text


def cmd_eval(args: argparse.Namespace) -> None:
    from guppylm.evaluate import evaluate_run, format_table

    results = []
    for run in args.runs:
        results.append(evaluate_run(Path(run), data_dir=args.data))
        print(f"{run}: report written to {run}/report.md ({results[-1]['seconds']:.0f} s)")
    print(format_table(results))


def cmd_run(args: argparse.Namespace) -> None:
    from guppylm.pipeline import run_pipeline

    run_pipeline(args)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=0.7, help="0 = always the likeliest")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--max-new-tokens", type=_positive_int, default=80)
    p.add_argument("--seed", type=int, default=None, help="fixed seed for repeatable replies")
    p.add_argument("--topic-temperature", type=float, default=0.0,
                   help="for the topic the model names before replying (0 = the likeliest)")


def add_train_args(p: argparse.ArgumentParser) -> None:
    from guppylm.model import PRESETS

    p.add_argument("--preset", choices=list(PRESETS), help="model size (default guppy-9m)")
    p.add_argument("--steps", type=_positive_int, help="optimizer steps (default 2000)")
    p.add_argument("--minutes", type=float, help="fit training into this many minutes")
    p.add_argument("--batch-tokens", type=_positive_int, dest="batch_tokens")
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int, help="warmup steps")
    p.add_argument("--topic-weight", type=_positive_float, dest="topic_weight",
                   help="loss weight of the tokens naming the topic (default 4; 1 = no extra)")
    p.add_argument("--vocab-size", type=_positive_int, dest="vocab_size")
    p.add_argument("--eval-every", type=_positive_int, dest="eval_every")
    p.add_argument("--checkpoint-every", type=_positive_int, dest="checkpoint_every")
    p.add_argument("--device", help="auto (default), cpu, cuda, mps")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true", default=None, help="use torch.compile")
    p.add_argument("--quiet", action="store_true", default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guppy", description="GuppyLM: build a tiny chat "
                                     "language model, from persona data to a chatting fish.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("data", help="generate conversations from a persona, or show stats",
                       description="Generate train/val/test conversations from a persona. "
                                   "`guppy data stats [DIR]` shows figures for a data folder.")
    p.add_argument("--persona", default="guppy", help="built-in name or a .toml path")
    p.add_argument("--n", type=_positive_int, default=60_000, help="conversations in all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="data", help="output folder (default: data)")
    data_sub = p.add_subparsers(dest="action", metavar="ACTION")
    stats = data_sub.add_parser("stats", help="figures for a data folder")
    stats.add_argument("dir", nargs="?", default="data")
    p.set_defaults(func=cmd_data, action=None)

    p = sub.add_parser("persona", help="work with persona files")
    persona_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = persona_sub.add_parser("check", help="validate a persona and show samples")
    check.add_argument("file", help="built-in name or a .toml path")
    check.add_argument("--samples", type=int, default=4)
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(func=cmd_persona_check)

    p = sub.add_parser("train", help="train a tokenizer and a model on generated data",
                       description="Train into a run folder; `--resume` continues after a crash.")
    p.add_argument("--data", help="data folder from `guppy data` (default: data)")
    # --run-dir too: under torchrun, its own parser takes --run for --run-path
    p.add_argument("--run", "--run-dir", dest="run",
                   help="run folder to write (default: runs/guppy)")
    add_train_args(p)
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the run in --run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace an existing run folder")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("chat", help="talk to a trained model")
    p.add_argument("--model", default="runs/guppy", help="run folder (default: runs/guppy)")
    p.add_argument("--prompt", help="print one reply to this message and exit")
    p.add_argument("--show-topic", action="store_true",
                   help="show the topic the model names before each reply, e.g. [food]")
    add_sampling_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("eval", help="measure trained models; write report.md into each run",
                       description="Losses, bits per byte, the persona test, well-formedness, "
                                   "variety and multi-turn figures; several runs side by side.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s), e.g. runs/guppy")
    p.add_argument("--data", help="data folder (default: the one the run was trained on)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("run", help="the whole pipeline: data, tokenizer, training, sample chat",
                       description="Generate data, train the default model within a time "
                                   "budget, and show sample exchanges.")
    p.add_argument("--persona", default="guppy", help="built-in name or a .toml path")
    p.add_argument("--n", type=_positive_int, default=60_000, help="conversations to generate")
    p.add_argument("--data", default="data")
    p.add_argument("--run", default="runs/guppy")
    add_train_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_run)
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except GuppyError as e:
        print(f"guppy: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0
