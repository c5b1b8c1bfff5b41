"""The learning timeline: the same few questions, asked while the model trains.

At some validation steps, training asks a handful of fixed prompts and metrics.jsonl keeps
the replies. Read in order they show a model learning to talk: gibberish -> words ->
sentences -> in character -> on topic. report.md shows them beside the validation loss, and
`guppy run` prints the last of them.

Which prompts: the first user turn of conversations in the val split, one per topic while
there are topics, short ones first. From val, because training never saw those phrasings: a
reply that gets better is the model generalising, not recalling. One per topic, so that the
replies show the routing too. Taken from the data rather than written here, so that any
persona, or free-form data without topics, gets its own. The run keeps them in config.json,
so that a resumed run and its report ask the same ones. Replies are greedy (the likeliest
token each time): the only thing that changes between two rows is the model.

When: at validation steps 1, 2, 4, 8, ... times `eval_every`, and the last. A small model
changes most early on (its loss falls on a log scale), so doubling gaps catch every stage in
a handful of rows, and the cost stays a few dozen short replies however long the run: under
1% of a 10-minute `guppy run` even with every reply at its length limit on a busy CPU, where
asking at every validation would take 7% (docs/benchmarks.md, "The learning timeline"). On a
GPU, whose steps take milliseconds, the difference is larger still.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from guppylm.chat import Guppy
from guppylm.checkpoint import read_config
from guppylm.generate import SamplingConfig
from guppylm.model import GPT
from guppylm.tokenizer import Tokenizer

PROMPTS = 5  # questions asked each time
MAX_NEW_TOKENS = 40  # a typical reply whole (Guppy: 12 words on average); a runaway is cut
SHORT = 8  # words: longer prompts are taken only when the short ones run out (a readable table)


def pick_prompts(val_convs: list[dict], n: int = PROMPTS) -> list[str]:
    """`n` distinct first user turns of `val_convs`, taken in rounds of one per topic (data
    without topics: one a round), short ones first, otherwise in the file's order: the same
    data gives the same prompts."""
    firsts = [(conv.get("topic"), first_user_turn(conv)) for conv in val_convs]
    firsts = [(topic, text) for topic, text in firsts if text]
    firsts.sort(key=lambda pair: len(pair[1].split()) > SHORT)  # stable: file order kept
    picked: list[str] = []
    while len(picked) < n:
        topics, before = set(), len(picked)
        for topic, text in firsts:
            if len(picked) < n and topic not in topics and text not in picked:
                picked.append(text)
                topics.add(topic)
        if len(picked) == before:  # fewer distinct prompts than n
            break
    return picked


def first_user_turn(conv: dict) -> str:
    return next((m["content"] for m in conv["messages"] if m["role"] == "user"), "")


def prompts_for(run: Path, val_convs: list[dict], resume: bool) -> list[str]:
    """The prompts a run asks: a resumed run, those its config.json recorded (chosen again
    for a run from before the timeline)."""
    recorded = read_config(run).get("timeline_prompts") if resume else None
    return recorded if recorded is not None else pick_prompts(val_convs)


def is_due(step: int, eval_every: int, last: bool) -> bool:
    """Whether a validation at `step` asks the prompts: at 1, 2, 4, 8, ... times
    `eval_every`, and at the last step."""
    k, rest = divmod(step, eval_every)
    return last or (rest == 0 and k > 0 and k & (k - 1) == 0)


def ask(model: GPT, tok: Tokenizer, prompts: list[str]) -> list[dict]:
    """The model's greedy reply to each prompt: {"prompt", "topic", "reply"} each."""
    was_training, threads = model.training, torch.get_num_threads()
    # One token of a small model is too little work to share: with several CPU threads each
    # operation waits for the others, which costs more than it saves (7x slower with two
    # threads on a busy 2-core machine, docs/benchmarks.md). Training gets them back below.
    torch.set_num_threads(1)
    try:
        guppy = Guppy(model, tok, SamplingConfig(temperature=0, max_new_tokens=MAX_NEW_TOKENS))
        answers = []
        for prompt in prompts:
            reply = guppy.respond([{"role": "user", "content": prompt}])
            answers.append({"prompt": prompt, "topic": reply.topic, "reply": reply.text})
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)  # Guppy put it in eval mode
    return answers


# ----------------------------------------------------------------------------- reading it

def read(metrics: Path) -> list[dict]:
    """The timeline of a run's metrics.jsonl, in step order: {"step", "val_loss",
    "answers"} each (val_loss None if that step has none)."""
    if not Path(metrics).is_file():
        return []
    rows = [json.loads(line) for line in Path(metrics).read_text().splitlines() if line]
    val = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    return [{"step": r["step"], "val_loss": val.get(r["step"]), "answers": r["timeline"]}
            for r in rows if r.get("timeline")]


def shown(answer: dict) -> str:
    """A reply as `guppy chat --show-topic` prints it: `[topic] text`."""
    text = " ".join(answer["reply"].split()) or "(nothing)"
    return f"[{answer['topic']}] {text}" if answer.get("topic") else text


def markdown(timeline: list[dict], name: str) -> list[str]:
    """report.md's lines: one table per prompt, a row per step it was asked at."""
    if not timeline:
        return ["- (none: this run was trained before training asked questions)", ""]
    out = []
    for i, prompt in enumerate(a["prompt"] for a in timeline[0]["answers"]):
        out += [f"**you:** {_cell(prompt)}", "", f"| step | val loss | {name} |",
                "|---:|---:|---|"]
        for row in timeline:
            loss = "" if row["val_loss"] is None else f"{row['val_loss']:.3f}"
            out.append(f"| {row['step']:,} | {loss} | {_cell(shown(row['answers'][i]))} |")
        out.append("")
    return out


def lines(timeline: list[dict], name: str, prompts: int = 2, last: int = 8) -> list[str]:
    """What `guppy run` prints: the first `prompts` prompts, at the last `last` steps."""
    out = []
    for i in range(min(prompts, len(timeline[0]["answers"]) if timeline else 0)):
        out.append(f"  you: {timeline[0]['answers'][i]['prompt']}")
        for row in timeline[-last:]:
            out.append(f"    step {row['step']:>6,}  {name}: {shown(row['answers'][i])}")
    return out


def _cell(text: str) -> str:
    """Text that stays inside one cell of a Markdown table."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
