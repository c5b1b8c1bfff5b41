"""`guppy eval`: an honest measurement of a trained model, and a report card.

Losses on the held-out val and test splits (whose phrasings training never saw), in nats
per token and in bits per byte; the persona test (hand-written prompts, several seeds);
sentence well-formedness against the persona's grammar; variety and copying; and scripted
multi-turn conversations. Everything it needs is in the run folder (the persona and its
test are copied there at training time) plus the data folder it was trained on.
"""

from __future__ import annotations

import json
import math
import time
import tomllib
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from guppylm import data as data_mod
from guppylm import persona as persona_mod
from guppylm.atomic import atomic_write
from guppylm.batching import collate, encode_examples, make_batches
from guppylm.chat import Guppy, Reply
from guppylm.chat_format import first_sentence, opening_to_avoid, turns
from guppylm.checkpoint import read_config
from guppylm.errors import GuppyError
from guppylm.report import write_report
from guppylm.scoring import (
    Grammar,
    copy_rate,
    distinct_n,
    judge,
    uses_any,
)
from guppylm.train import mean_loss

STYLES = ("plain", "shouting", "typos", "slang", "rambling", "emoji", "foreign", "injection",
          "minimal")
SEEDS = (0, 1, 2)


@dataclass
class TestPrompt:
    text: str
    topic: str
    style: str
    expect: list[str]


@dataclass
class PersonaTest:
    prompts: list[TestPrompt]
    conversations: list[tuple[str, list[TestPrompt]]] = field(default_factory=list)


def persona_test_path(persona_path: Path) -> Path:
    """`guppy.toml` -> `guppy.test.toml`, beside it."""
    return persona_path.with_name(persona_path.stem + ".test.toml")


def load_persona_test(path: Path, persona: persona_mod.Persona) -> PersonaTest:
    """Read and check a persona test file; errors name the file and the entry."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GuppyError(f"{path}: missing; write a persona test beside the persona "
                         "(see README, 'Honest evaluation')") from None
    except tomllib.TOMLDecodeError as e:
        raise GuppyError(f"{path}: malformed TOML ({e}); fix the syntax") from None
    topics = {t.name for t in persona.topics}

    def entry(item: dict, at: str, default_style: str = "plain") -> TestPrompt:
        prompt = TestPrompt(text=item.get("text", ""), topic=item.get("topic", ""),
                            style=item.get("style", default_style),
                            expect=item.get("expect", []))
        if not isinstance(prompt.text, str) or not prompt.text.strip():
            raise GuppyError(f"{path}: {at}: missing text; add text = \"...\"")
        if prompt.topic not in topics:
            raise GuppyError(f"{path}: {at}: unknown topic '{prompt.topic}'; use a topic name "
                             "from the persona file")
        if prompt.style not in STYLES:
            raise GuppyError(f"{path}: {at}: unknown style '{prompt.style}'; use one of "
                             f"{', '.join(STYLES)}")
        if not prompt.expect or not all(isinstance(w, str) for w in prompt.expect):
            raise GuppyError(f"{path}: {at}: expect must list the words an on-topic reply "
                             "would use")
        return prompt

    prompts = [entry(p, f"prompts[{i}]") for i, p in enumerate(raw.get("prompts", []))]
    if not prompts:
        raise GuppyError(f"{path}: no [[prompts]]; add hand-written test prompts")
    conversations = []
    for i, conv in enumerate(raw.get("conversations", [])):
        steps = [entry(t, f"conversations[{i}].turns[{j}]")
                 for j, t in enumerate(conv.get("turns", []))]
        conversations.append((conv.get("name", f"conversation {i + 1}"), steps))
    return PersonaTest(prompts, conversations)


# ----------------------------------------------------------------------------- losses

def split_loss(guppy: Guppy, conversations: list[dict],
               batch_tokens: int = 8192) -> tuple[float, float]:
    """(mean loss in nats per assistant token, bits per byte of assistant text).

    Bits per byte divide the same total loss by the UTF-8 bytes of what the assistant writes
    (each reply, with its topic token and end-of-turn marker counted as one byte each), so
    models with different tokenizers compare fairly.
    """
    tok = guppy.tok
    examples = encode_examples(tok, conversations, guppy.model.cfg.context)
    batches = (collate(examples, batch, tok.end_id)[:2]
               for batch in make_batches(examples, batch_tokens, seed=0))
    loss, tokens = mean_loss(guppy.model, batches)
    n_bytes = sum(len(m["content"].encode("utf-8")) + 1 + bool(m.get("topic"))
                  for conv in conversations for m in conv["messages"] if m["role"] == "assistant")
    return loss, loss * tokens / math.log(2) / max(1, n_bytes)


# ----------------------------------------------------------------------------- the test

def run_persona_test(guppy: Guppy, test: PersonaTest, persona: persona_mod.Persona,
                     seeds=SEEDS) -> list[dict]:
    """Reply to every single-turn prompt at every seed; one scored row each."""
    asked = [(prompt, seed) for prompt in test.prompts for seed in seeds]
    replies = respond_together(guppy, [([{"role": "user", "content": prompt.text}], seed)
                                       for prompt, seed in asked])
    rows = []
    for (prompt, seed), reply in zip(asked, replies, strict=True):
        verdict = judge(reply.text, reply.ended, prompt.expect, persona)
        rows.append({"prompt": prompt.text, "topic": prompt.topic, "style": prompt.style,
                     "seed": seed, "reply": reply.text, "said_topic": reply.topic,
                     "routed": reply.topic == prompt.topic, "passed": verdict.passed,
                     "in_character": verdict.in_character, "on_topic": verdict.on_topic,
                     "reasons": verdict.reasons})
    return rows


def run_conversations(guppy: Guppy, test: PersonaTest, persona: persona_mod.Persona,
                      history_topics: bool, seeds=SEEDS) -> list[dict]:
    """Play the scripted conversations; one scored row per turn.

    The history goes back to the model as plain chat clients send it (`content` only), or,
    with `history_topics`, with the topic each past reply named. A turn `repeats` when its
    first sentence is the previous reply's first sentence. All conversations advance
    together, a turn at a time (each turn needs the reply before it).
    """
    played = [(name, steps, seed, []) for name, steps in test.conversations for seed in seeds]
    rows: dict[tuple[int, int], dict] = {}
    for turn in range(1, max((len(steps) for _, steps, _, _ in played), default=0) + 1):
        now = [(i, p) for i, p in enumerate(played) if turn <= len(p[1])]
        for _, (_, steps, _, history) in now:
            history.append({"role": "user", "content": steps[turn - 1].text})
        replies = respond_together(guppy, [(history, seed) for _, (_, _, seed, history) in now])
        for (i, (name, steps, seed, history)), reply in zip(now, replies, strict=True):
            step = steps[turn - 1]
            previous = history[-2]["content"] if turn > 1 else None
            history.append(reply.message(with_topic=history_topics))
            verdict = judge(reply.text, reply.ended, step.expect, persona)
            rows[i, turn] = {"conversation": name, "turn": turn, "seed": seed,
                             "prompt": step.text, "reply": reply.text,
                             "said_topic": reply.topic, "routed": reply.topic == step.topic,
                             "passed": verdict.passed, "reasons": verdict.reasons,
                             "repeats": previous is not None
                             and first_sentence(reply.text) == first_sentence(previous)}
    return [rows[key] for key in sorted(rows)]  # conversation by conversation, as played


def respond_together(guppy: Guppy, requests: list[tuple[list[dict], int]],
                     max_batch: int = 64) -> list[Reply]:
    """`guppy.respond(messages, seed=seed)` for every (messages, seed), decoded in batches
    (decode.py): the same replies, bit for bit, several times faster."""
    from guppylm.decode import BatchDecoder, Sequence  # decode imports chat, as we do

    decoder = BatchDecoder(guppy.model, guppy.tok)
    waiting = deque(enumerate(requests))
    index: dict = {}  # sequence -> its request (a Sequence hashes by identity)
    parts: list[list] = [["", None, "length"] for _ in requests]  # text, topic, finish
    while waiting or decoder.active:
        while waiting and len(decoder.active) < max_batch:
            i, (messages, seed) = waiting.popleft()
            cfg = replace(guppy.sampling, seed=seed)
            seq = Sequence(guppy.prompt_ids(messages, cfg.max_new_tokens), cfg,
                           avoid=opening_to_avoid(messages) if cfg.temperature > 0 else "")
            index[seq] = i
            decoder.add(seq)
        for seq, chunk in decoder.step():
            part = parts[index[seq]]
            part[0] += chunk.text
            part[1] = chunk.topic or part[1]
            part[2] = chunk.finish or part[2]
    return [Reply(*part) for part in parts]


def repeat_rate(rows: list[dict]) -> float:
    """The share of follow-up turns (2nd on) that begin with the previous reply's sentence."""
    return rate([r for r in rows if r["turn"] > 1], "repeats")


def chance_on_topic(test: PersonaTest, persona: persona_mod.Persona, per_topic: int = 20) -> float:
    """How often a reply drawn from a *wrong* topic would still count as on topic.

    The floor that the on-topic rate should be read against: expected words that other
    topics use too make a test easier than it looks.
    """
    import random

    from guppylm import template

    rng = random.Random(0)
    replies = {t.name: [template.expand(rng.choice(t.replies), persona.pools, rng)
                        for _ in range(per_topic)] for t in persona.topics}
    rates = []
    for prompt in test.prompts:
        others = [r for name, rs in replies.items() if name != prompt.topic for r in rs]
        rates.append(sum(uses_any(r, prompt.expect) for r in others) / max(1, len(others)))
    return sum(rates) / max(1, len(rates))


def rate(rows: list[dict], key: str = "passed") -> float:
    """The share of scored rows where `key` is true (0 for none)."""
    return sum(r[key] for r in rows) / max(1, len(rows))


def rate_by(rows: list[dict], by: str) -> dict[str, float]:
    """Pass rate per value of `by` (a topic, a style, a turn)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row[by]].append(row)
    return {k: rate(v) for k, v in sorted(groups.items())}


# ----------------------------------------------------------------------------- evaluate

def evaluate_run(run: Path, data_dir: Path | None = None, quiet: bool = False) -> dict:
    """All the figures for one run folder; also writes eval.json, report.md and plots.

    `data_dir`: the data the run was trained on, if not where config.json says (see
    `trained_splits`). `quiet`: no message when the splits are composed again.
    """
    start = time.perf_counter()
    config = read_config(run)
    persona_path = run / "persona.toml"
    if not persona_path.is_file():
        raise GuppyError(f"{persona_path}: missing; retrain with `guppy train` so the run "
                         "keeps a copy of its persona")
    persona = persona_mod.load(str(persona_path))
    test = load_persona_test(persona_test_path(persona_path), persona)
    guppy = Guppy.load(run)
    splits = trained_splits(run, config, persona, data_dir, quiet)
    train_replies = {r for conv in splits["train"] for _, r in turns(conv)}

    metrics: dict = {"run": str(run), "preset": config["train"]["preset"],
                     "parameters": config.get("parameters"), "persona": persona.name}
    for split in ("val", "test"):
        loss, bpb = split_loss(guppy, splits[split])
        metrics[f"{split}_loss"], metrics[f"{split}_bpb"] = loss, bpb
    rows = run_persona_test(guppy, test, persona)
    multi = run_conversations(guppy, test, persona, history_topics=False)
    multi_topics = run_conversations(guppy, test, persona, history_topics=True)
    replies = [r["reply"] for r in rows]
    grammar = Grammar(persona)
    metrics.update({
        "persona_pass": rate(rows), "in_character": rate(rows, "in_character"),
        "on_topic": rate(rows, "on_topic"), "routed": rate(rows, "routed"),
        "on_topic_by_chance": chance_on_topic(test, persona),
        "well_formed": grammar.share_well_formed(replies + [m["reply"] for m in multi]),
        "distinct_1": distinct_n(replies, 1), "distinct_2": distinct_n(replies, 2),
        "copy_rate": copy_rate(replies, train_replies),
        "multi_turn_pass": rate(multi), "multi_turn_pass_with_topics": rate(multi_topics),
        "repeat_rate": repeat_rate(multi), "repeat_rate_with_topics": repeat_rate(multi_topics),
        "per_style": rate_by(rows, "style"), "per_topic": rate_by(rows, "topic"),
        "per_turn": rate_by(multi, "turn"),
        "failures": dict(Counter(reason for r in rows for reason in r["reasons"])),
        "prompts": len(test.prompts), "samples": len(rows),
        "seconds": round(time.perf_counter() - start, 1),
    })
    write_report(run, metrics, rows, multi)
    atomic_write(run / "eval.json", json.dumps({**metrics, "rows": rows, "multi_turn": multi},
                                               indent=1) + "\n")
    return metrics


def trained_splits(run: Path, config: dict, persona: persona_mod.Persona,
                   data_dir: Path | None = None, quiet: bool = False) -> dict[str, list[dict]]:
    """The train/val/test conversations a run was trained and validated on.

    From `data_dir` if given; else from the data folder that config.json records, if it
    still holds the same data (the DataConfig and persona the run recorded); else composed
    again, in memory, from the run's copy of its persona and the recorded DataConfig: the
    same persona and config give the same conversations.
    """
    if data_dir is not None:
        return _read_splits(Path(data_dir))
    recorded, data_cfg = Path(config["train"]["data"]), config.get("data")
    if data_cfg is None or _holds(recorded, data_cfg, run):  # no DataConfig: trust the folder
        return _read_splits(recorded)
    if not quiet:
        print(f"{run}: {recorded} no longer holds the data this run was trained on; composing "
              f"it again from {run / 'persona.toml'} (n={data_cfg['n']:,}, "
              f"seed={data_cfg['seed']})")
    known = {f.name for f in fields(data_mod.DataConfig)}
    return data_mod.compose(persona, data_mod.DataConfig(
        **{k: v for k, v in data_cfg.items() if k in known}))


def _read_splits(folder: Path) -> dict[str, list[dict]]:
    return {split: data_mod.read_split(folder, split) for split in data_mod.SPLITS}


def _holds(folder: Path, data_cfg: dict, run: Path) -> bool:
    """Whether `folder` holds the data composed with `data_cfg` from the run's persona."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        same_persona = (folder / "persona.toml").read_bytes() == (run / "persona.toml").read_bytes()
    except (OSError, ValueError):
        return False
    return meta.get("config") == data_cfg and same_persona


HEADLINE = [("persona test pass", "persona_pass", "{:.1%}"),
            ("  in character", "in_character", "{:.1%}"),
            ("  on topic", "on_topic", "{:.1%}"),
            ("  (a wrong topic's reply)", "on_topic_by_chance", "{:.1%}"),
            ("  topic named right", "routed", "{:.1%}"),
            ("well-formed sentences", "well_formed", "{:.1%}"),
            ("multi-turn pass", "multi_turn_pass", "{:.1%}"),
            ("  history with topics", "multi_turn_pass_with_topics", "{:.1%}"),
            ("  repeats previous reply", "repeat_rate", "{:.1%}"),
            ("val loss (nats/token)", "val_loss", "{:.3f}"),
            ("test loss (nats/token)", "test_loss", "{:.3f}"),
            ("test bits per byte", "test_bpb", "{:.3f}"),
            ("copied from training", "copy_rate", "{:.1%}"),
            ("distinct-1 / distinct-2", None, None)]


def format_table(results: list[dict]) -> str:
    """Side-by-side headline figures of one or more runs, then the persona test's pass rate
    by style of prompt ("-" where a run's test has no prompt of that style)."""
    width = max(14, *(len(Path(r["run"]).name) + 2 for r in results))
    lines = [f"{'':<26}" + "".join(f"{Path(r['run']).name:>{width}}" for r in results)]
    lines.append(f"{'preset':<26}" + "".join(f"{r['preset']:>{width}}" for r in results))
    for label, key, fmt in HEADLINE:
        if key is None:
            cells = [f"{r['distinct_1']:.2f} / {r['distinct_2']:.2f}" for r in results]
        else:
            cells = [fmt.format(r[key]) for r in results]
        lines.append(f"{label:<26}" + "".join(f"{c:>{width}}" for c in cells))
    styles = sorted({style for r in results for style in r.get("per_style", {})})
    if styles:
        lines.append("persona test by style")
    for style in styles:
        cells = [f"{r['per_style'][style]:.0%}" if style in r.get("per_style", {}) else "-"
                 for r in results]
        lines.append(f"{'  ' + style:<26}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)
