"""The report card that `guppy eval` writes into a run folder: report.md and its plots."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from guppylm import timeline
from guppylm.atomic import atomic_write
from guppylm.plots import plot_loss, plot_rates

EXAMPLES = 6


def write_report(run: Path, m: dict, rows: list[dict], multi: list[dict]) -> None:
    if (run / "metrics.jsonl").is_file():
        plot_loss(run / "metrics.jsonl", run / "loss.png")
    plot_rates(m["per_topic"], "pass rate per topic", run / "persona_topics.png")
    plot_rates(m["per_style"], "pass rate per style of prompt", run / "persona_styles.png")
    text = "\n".join([
        f"# Report card: {run.name}",
        "",
        f"{m['persona']} · preset `{m['preset']}` · {m['parameters']:,} parameters · "
        f"{m['prompts']} hand-written prompts × {m['samples'] // max(1, m['prompts'])} seeds",
        "",
        "| figure | value | what it means |",
        "|---|---|---|",
        f"| persona test pass | {m['persona_pass']:.1%} | in character *and* on topic |",
        f"| in character | {m['in_character']:.1%} | voice rules kept, no markup, no loop, "
        "ended by itself |",
        f"| on topic | {m['on_topic']:.1%} | used a word the prompt's author expected "
        f"(a reply of a wrong topic would pass {m['on_topic_by_chance']:.1%} of the time) |",
        f"| topic named right | {m['routed']:.1%} | the topic the model named before its reply "
        "was the prompt's |",
        f"| well-formed sentences | {m['well_formed']:.1%} | sentences the persona's grammar "
        "can produce |",
        f"| multi-turn pass | {m['multi_turn_pass']:.1%} | scripted conversations, every turn; "
        "history sent back as `content` only, as chat clients send it |",
        f"| multi-turn, history with topics | {m['multi_turn_pass_with_topics']:.1%} | the same, "
        "past replies with their topic tokens |",
        f"| repeats the previous reply | {m['repeat_rate']:.1%} / "
        f"{m['repeat_rate_with_topics']:.1%} | follow-up turns that begin with the previous "
        "reply's first sentence (content only / with topics) |",
        f"| val / test loss | {m['val_loss']:.3f} / {m['test_loss']:.3f} | nats per assistant "
        "token, phrasings unseen in training |",
        f"| val / test bits per byte | {m['val_bpb']:.3f} / {m['test_bpb']:.3f} | "
        "independent of the tokenizer |",
        f"| copied from training | {m['copy_rate']:.1%} | replies found verbatim in train |",
        f"| distinct-1 / distinct-2 | {m['distinct_1']:.2f} / {m['distinct_2']:.2f} | "
        "variety of words and word pairs |",
        "",
        "![loss](loss.png)",
        "",
        "## Learning timeline",
        "",
        "The same questions (from the val split: phrasings training never saw), asked during "
        "training with greedy replies, at 1, 2, 4, 8, ... times the validation interval and at "
        "the last step: the replies go from gibberish to words, to sentences, to in character, "
        "to on topic. `[topic]` is the topic the model named first.",
        "",
        *timeline.markdown(timeline.read(run / "metrics.jsonl"), m["persona"].lower()),
        "## By style of prompt",
        "",
        "| style | pass |",
        "|---|---|",
        *[f"| {style} | {rate:.0%} |" for style, rate in m["per_style"].items()],
        "",
        "![styles](persona_styles.png)",
        "",
        "## By turn of a scripted conversation",
        "",
        "| turn | pass |",
        "|---|---|",
        *[f"| {turn} | {rate:.0%} |" for turn, rate in m["per_turn"].items()],
        "",
        "## Why replies failed",
        "",
        *([f"- {reason}: {count}" for reason, count in
           sorted(m["failures"].items(), key=lambda kv: -kv[1])] or ["- nothing failed"]),
        "",
        "## Topics mixed up most (the prompt's topic → the one the model named)",
        "",
        *_confusions(rows),
        "",
        "## Examples that passed",
        "",
        *_examples([r for r in rows if r["passed"]]),
        "",
        "## Examples that failed",
        "",
        *_examples([r for r in rows if not r["passed"]], reasons=True),
        "",
        "## By topic",
        "",
        "![topics](persona_topics.png)",
        "",
    ])
    atomic_write(run / "report.md", text + "\n")


def _examples(rows: list[dict], reasons: bool = False) -> list[str]:
    seen, out = set(), []
    for row in rows:  # one per topic, so the examples show range
        if row["topic"] in seen or len(out) >= EXAMPLES:
            continue
        seen.add(row["topic"])
        why = f" — *{', '.join(row['reasons'])}*" if reasons else ""
        named = f"[{row['said_topic']}] " if row.get("said_topic") else ""
        reply = row["reply"] or "(nothing)"
        out.append(f"- **{row['style']}** `{row['prompt']}` → {named}{reply}{why}")
    return out or ["- (none)"]


def _confusions(rows: list[dict], top: int = 8) -> list[str]:
    pairs = Counter((r["topic"], r.get("said_topic") or "(none)") for r in rows
                    if not r.get("routed"))
    return [f"- {wanted} → {named}: {n}" for (wanted, named), n in pairs.most_common(top)] \
        or ["- none"]
