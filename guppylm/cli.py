"""The `guppy` command: one subcommand per pipeline stage.

Exit status: 0 done, 1 a failure while working, 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from pathlib import Path

from guppylm import data, devices, persona, persona_kit
from guppylm.data import DataConfig
from guppylm.errors import ConfigError, GuppyError
from guppylm.pipeline import run_config, run_pipeline
from guppylm.train_config import DTYPES, TrainConfig

# Nothing imported at the top may import torch: `guppy --help`, `guppy data` and
# `guppy persona check` need none of it, and loading it takes seconds. The commands that
# train or run a model import what they need themselves.


def cmd_data(args: argparse.Namespace) -> None:
    if args.action == "stats":
        print(data.format_stats(data.stats(Path(args.dir))))
        return
    p = persona.load(args.persona)
    cfg = DataConfig(**given(args, DataConfig))
    start = time.perf_counter()
    splits = data.compose(p, cfg)
    data.write(splits, p, cfg, Path(args.out))
    counts = ", ".join(f"{len(splits[s]):,} {s}" for s in data.SPLITS)
    print(f"wrote {counts} conversations of {p.name} to {args.out}/ "
          f"in {time.perf_counter() - start:.1f} s")


def cmd_persona_check(args: argparse.Namespace) -> None:
    p = persona.load(args.file)
    n_prompts = sum(len(t.all_prompts()) for t in p.topics)
    n_replies = sum(len(t.replies) + len(t.more) for t in p.topics)
    print(f"{p.path}: ok")
    print(f"  {p.name}: {p.description}")
    print(f"  voice: lowercase={str(p.lowercase).lower()}, max_words={p.max_words}")
    print(f"  {len(p.topics)} topics, {len(p.pools)} slot pools, "
          f"{n_prompts} prompt and {n_replies} reply templates")
    print("\n" + persona_kit.format_coverage(persona_kit.coverage(p)))
    composer = data.Composer(p, DataConfig(seed=args.seed, multi_turn_share=0.5))
    print("\nsample conversations:")
    for _ in range(args.samples):
        conv = composer.conversation("train")
        print(f"  [{conv['topic']}]")
        for msg in conv["messages"]:
            who = "you" if msg["role"] == "user" else p.name.lower()
            print(f"    {who:>8}: {msg['content']}")


def cmd_persona_new(args: argparse.Namespace) -> None:
    written = persona_kit.write_starter(args.name, args.out)
    print(f"wrote {written[0]} (every phrasebook intent, with replies to rewrite) and "
          f"{written[1]} (a persona test to rewrite)")
    print(f"next: edit them, then `guppy persona check {written[0]}` and "
          f"`guppy run --persona {written[0]}`")


def cmd_train(args: argparse.Namespace) -> None:
    from guppylm.train import train

    train(TrainConfig(**given(args, TrainConfig)), resume=args.resume,
          overwrite=args.overwrite, quiet=args.quiet)


def given(args: argparse.Namespace, config: type) -> dict:
    """The options given on the command line that set fields of the dataclass `config`
    (each option's dest is its field's name); the dataclass holds the defaults."""
    names = {f.name for f in fields(config)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


SAMPLING = ("temperature", "top_k", "top_p", "max_new_tokens", "seed", "topic_temperature")


def cmd_chat(args: argparse.Namespace) -> None:
    from guppylm.chat import Guppy

    guppy = Guppy.load(args.model, **{k: getattr(args, k) for k in SAMPLING
                                      if getattr(args, k) is not None})
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


def cmd_inspect(args: argparse.Namespace) -> None:
    from guppylm.checkpoint import load_run
    from guppylm.probe import ProbeConfig, format_inspection, inspect_prompt
    from guppylm.probe_plots import write_figures

    cfg = ProbeConfig(**given(args, ProbeConfig))  # bad flags fail before the model loads
    model, tok, _ = load_run(Path(args.run))
    seen = inspect_prompt(model, tok, cfg)
    paths = write_figures(seen, Path(args.out) if args.out else Path(args.run) / "inspect")
    print(format_inspection(seen))
    print("\nwrote " + " and ".join(str(path) for path in paths))


def cmd_serve(args: argparse.Namespace) -> None:
    from guppylm.serve import serve  # one-line GuppyError when the [serve] extra is missing

    serve(args.run, host=args.host, port=args.port)


def cmd_export(args: argparse.Namespace) -> None:
    from guppylm.export import export  # torch, and the [export] extra, load only here

    start = time.perf_counter()
    out = export(args.format, Path(args.run), Path(args.out), force=args.force,
                 int8=args.int8, vendor=args.vendor)
    print(f"exported {args.run} as {args.format} to {out} in {time.perf_counter() - start:.1f} s")


def cmd_run(args: argparse.Namespace) -> None:
    train_args = given(args, TrainConfig)
    if "run" not in train_args:  # each persona trains into its own folder: runs/fern/
        train_args["run"] = f"runs/{persona_kit.slug(persona.load(args.persona).name)}"
    acc = devices.detect(train_args.get("device", "auto"))  # the defaults suit the device
    run_pipeline(args.persona, DataConfig(**given(args, DataConfig)),
                 run_config(acc, **train_args), quiet=args.quiet)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    # No defaults here: SamplingConfig (generate.py) holds them, and reading it would load torch
    p.add_argument("--temperature", type=float,
                   help="higher: more varied replies; 0: always the likeliest token")
    p.add_argument("--top-k", type=int, help="sample among the k likeliest tokens (0: all)")
    p.add_argument("--top-p", type=float,
                   help="... and among the fewest tokens that hold this much probability")
    p.add_argument("--max-new-tokens", type=_positive_int, help="the longest reply, in tokens")
    p.add_argument("--seed", type=int, help="fixed seed for repeatable replies")
    p.add_argument("--topic-temperature", type=float,
                   help="for the topic the model names before replying (0: the likeliest)")


def add_train_args(p: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    """Options for TrainConfig's fields; `defaults` is what they are when not given."""
    d = defaults
    plan = f"{d.minutes:g} minutes" if d.minutes else f"{d.steps} steps"
    p.add_argument("--preset", help=f"model size, a preset of model.py (default: {d.preset})")
    p.add_argument("--steps", type=_positive_int,
                   help=f"plan the run in optimizer steps (default plan: {plan})")
    p.add_argument("--minutes", type=_positive_float,
                   help="plan it in minutes instead: the learning rate follows the clock "
                        f"(default plan: {plan})")
    p.add_argument("--batch-tokens", type=_positive_int,
                   help=f"tokens per step, padding included (default: {d.batch_tokens})")
    p.add_argument("--lr", type=_positive_float,
                   help=f"peak learning rate (default: {d.lr:g})")
    p.add_argument("--warmup", type=int, help=f"warmup steps (default: {d.warmup})")
    p.add_argument("--topic-weight", type=_positive_float,
                   help="loss weight of the tokens naming the topic; 1: no extra "
                        f"(default: {d.topic_weight:g})")
    p.add_argument("--vocab-size", type=_positive_int,
                   help=f"the largest vocabulary to learn (default: {d.vocab_size})")
    p.add_argument("--eval-every", type=_positive_int,
                   help=f"steps between validations (default: {d.eval_every})")
    p.add_argument("--checkpoint-every", type=_positive_int,
                   help=f"steps between checkpoints (default: {d.checkpoint_every})")
    p.add_argument("--device", help=f"auto, cpu, cuda, cuda:N or mps (default: {d.device})")
    p.add_argument("--dtype", choices=DTYPES,
                   help="auto: bf16 on GPUs of compute capability 8.0+, fp16 (with loss "
                        f"scaling) on 7.x, else fp32 (default: {d.dtype})")
    p.add_argument("--compile", action="store_true", default=None, help="use torch.compile")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guppy", description="GuppyLM: build a tiny chat "
                                     "language model, from persona data to a chatting fish.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_defaults, train_defaults, run_defaults = DataConfig(), TrainConfig(), run_config()

    p = sub.add_parser("data", help="compose conversations from a persona, or show stats",
                       description="Compose train/val/test conversations from a persona. "
                                   "`guppy data stats [DIR]` shows figures for a data folder.")
    add_data_args(p, data_defaults)
    p.add_argument("--out", default=train_defaults.data,
                   help="output folder (default: %(default)s)")
    data_sub = p.add_subparsers(dest="action", metavar="ACTION")
    stats = data_sub.add_parser("stats", help="figures for a data folder")
    stats.add_argument("dir", nargs="?", default=train_defaults.data)
    p.set_defaults(func=cmd_data, action=None)

    p = sub.add_parser("persona", help="work with persona files")
    persona_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = persona_sub.add_parser("check", help="validate a persona and show samples")
    check.add_argument("file", help="built-in name or a .toml path")
    check.add_argument("--samples", type=int, default=4)
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(func=cmd_persona_check)
    new = persona_sub.add_parser("new", help="write a starter persona and its test to rewrite",
                                 description="Write NAME.toml, with every phrasebook intent "
                                             "and replies to rewrite, and NAME.test.toml.")
    new.add_argument("name", metavar="NAME", help="the character's name, e.g. Mochi")
    new.add_argument("--out", help="the persona file to write (default: NAME.toml, lowercase, "
                                   "here); its test goes beside it")
    new.set_defaults(func=cmd_persona_new)

    p = sub.add_parser("train", help="train a tokenizer and a model on composed data",
                       description="Train into a run folder; `--resume` continues after a crash.")
    add_folder_args(p, train_defaults)
    add_train_args(p, train_defaults)
    p.add_argument("--seed", type=int, help="seeds the initial weights and the batch order "
                                            f"(default: {train_defaults.seed})")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run from its last checkpoint, with its config")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("chat", help="talk to a trained model")
    p.add_argument("--model", default=train_defaults.run,
                   help="run folder (default: %(default)s)")
    p.add_argument("--prompt", help="print one reply to this message and exit")
    p.add_argument("--show-topic", action="store_true",
                   help="show the topic the model names before each reply, e.g. [food]")
    add_sampling_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="an OpenAI-compatible server and a chat page for a model",
                       description="Serve a run folder: POST /v1/chat/completions for any "
                                   "OpenAI client, and a chat page at /.")
    p.add_argument("run", nargs="?", default=train_defaults.run, metavar="RUN",
                   help="run folder (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s; 0.0.0.0 for the network)")
    p.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("eval", help="measure trained models; write report.md into each run",
                       description="Losses, bits per byte, the persona test, well-formedness, "
                                   "variety and multi-turn figures; several runs side by side.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s), e.g. runs/guppy")
    p.add_argument("--data", help="data folder (default: the one the run was trained on, "
                                  "or, when it is gone, the same data composed again)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("inspect", help="look inside: tokens, topic, probabilities, attention",
                       description="Show how a model reads a prompt and writes its reply: "
                                   "the prompt's tokens, the topic decision, the likeliest "
                                   "candidates for each reply token, the logit lens, and "
                                   "attention.png and tokens.png (docs/inspect.md).")
    p.add_argument("run", metavar="RUN", help="run folder, e.g. runs/guppy")
    p.add_argument("--prompt", required=True, help="the message to reply to")
    p.add_argument("--top", type=int, help="candidates shown per reply token (default: 5)")
    p.add_argument("--lens", action="store_true", default=None,
                   help="also show what each layer would predict (the logit lens)")
    p.add_argument("--seed", type=int,
                   help="sample the reply as chat does, with this seed (default: greedy)")
    p.add_argument("--max-new-tokens", type=int, help="the longest reply (default: 80)")
    p.add_argument("--out", help="folder for the pictures (default: RUN/inspect)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("export", help="export a model to transformers, ONNX, the browser, GGUF",
                       description="Write a trained model in another runtime's format "
                                   "(docs/export.md): hf (transformers), onnx (ONNX Runtime, "
                                   "transformers.js), web (a static chat page), gguf "
                                   "(llama.cpp, Ollama).")
    p.add_argument("format", choices=("hf", "onnx", "web", "gguf"), metavar="FORMAT",
                   help="hf, onnx, web or gguf")
    p.add_argument("run", metavar="RUN", help="run folder, e.g. runs/guppy")
    p.add_argument("out", metavar="OUT",
                   help="folder to write (for gguf: the .gguf file; a Modelfile goes beside it)")
    p.add_argument("--int8", action="store_true",
                   help="onnx: also write onnx/model_quantized.onnx (int8 weights)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.add_argument("--vendor", help="web: folder of the vendored JavaScript "
                                    "(default: the one `make vendor` fills)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("run", help="the whole pipeline: data, tokenizer, training, sample chat",
                       description="Compose data, train a model within a time budget "
                                   "(pipeline.RUN_PRESET), show sample exchanges, evaluate. "
                                   "The defaults below are a CPU's; on a CUDA GPU it trains "
                                   "guppy-9m in batches sized to the GPU, in bf16 or fp16 "
                                   "(pipeline.GPU_RUN_PRESET).")
    add_data_args(p, data_defaults)
    add_folder_args(p, run_defaults, run_default="runs/<the persona's name>")
    add_train_args(p, run_defaults)
    p.set_defaults(func=cmd_run)
    return parser


def add_data_args(p: argparse.ArgumentParser, defaults: DataConfig) -> None:
    """--persona, and options for DataConfig's fields (`--seed` seeds training too)."""
    p.add_argument("--persona", default="guppy", help="built-in name or a .toml path "
                                                      "(default: %(default)s)")
    p.add_argument("--n", type=_positive_int,
                   help=f"conversations in all (default: {defaults.n:,})")
    p.add_argument("--seed", type=int,
                   help=f"seeds the composer, and training too (default: {defaults.seed})")


def add_folder_args(p: argparse.ArgumentParser, defaults: TrainConfig,
                    run_default: str | None = None) -> None:
    p.add_argument("--data", help=f"data folder from `guppy data` (default: {defaults.data})")
    # --run-dir too: under torchrun, its own parser takes --run for --run-path
    p.add_argument("--run", "--run-dir", dest="run",
                   help=f"run folder to write (default: {run_default or defaults.run})")


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
        print(f"guppy: error: {in_flags(e, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0


def in_flags(error: GuppyError, args: argparse.Namespace) -> str:
    """The error's message, naming the flag (--preset) where it names a config field that
    this command has a flag for (TrainConfig.preset): that is what the user typed."""
    if isinstance(error, ConfigError) and hasattr(args, error.field):
        return error.for_flag("--" + error.field.replace("_", "-"))
    return str(error)
