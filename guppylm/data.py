"""The data composer: a persona file in, tens of thousands of conversations out.

Three ideas keep the data varied and the evaluation honest:
1. User prompts are *composed*: a topic's phrasing template or one of its subjects in a
   generic frame, plus at random the character's name, an opener, an unrelated lead-in,
   dropped or doubled punctuation, an emoji and a typo. So the model meets many ways of
   saying the same thing. (Case is folded: see `normalize_user_text`.)
2. About a fifth of conversations run 2-4 turns: follow-ups ("why?", "tell me more")
   answered from the topic's `more` replies, or a switch to another topic.
3. Splits are held out by *phrasing*: each topic's prompt templates (and the follow-up
   questions) are divided between train, val and test, and a val/test conversation whose
   prompt (or any (prompt, reply) pair) also occurs in train is drawn again. Test loss
   then measures generalisation to new phrasings, not recall of seen ones. A topic that
   answers a phrasebook intent holds out the intent's phrasings as the phrasebook divides
   them (the same ones for every persona) and its own as its own.
"""

from __future__ import annotations

import bisect
import json
import random
import tomllib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from guppylm import template
from guppylm.atomic import atomic_write_all
from guppylm.chat_format import conversation, first_sentence, normalize_user_text, turns
from guppylm.errors import ConfigError, GuppyError
from guppylm.persona import SUBJECT, Persona, Topic

SPLITS = ("train", "val", "test")


@dataclass
class DataConfig:
    n: int = 60_000  # conversations in all three splits together
    seed: int = 0
    val_share: float = 0.05  # of the conversations
    test_share: float = 0.05
    val_phrasings: float = 0.04  # of each topic's prompt templates (and subjects), for val only
    test_phrasings: float = 0.06  # ... for test only; training never sees either share
    multi_turn_share: float = 0.20  # conversations with 2-4 turns
    followup_share: float = 0.6  # of extra turns: a follow-up question (else a topic switch)
    name_rate: float = 0.30  # prompts that address the character by name
    opener_rate: float = 0.25  # prompts that start with "hey", "so", ...
    preamble_rate: float = 0.08  # prompts after an unrelated lead-in ("long day today.")
    emoji_rate: float = 0.06  # prompts with an emoji before or after
    bare_rate: float = 0.25  # prompts whose end punctuation is dropped
    double_rate: float = 0.08  # prompts that end "??" or "!!"
    typo_rate: float = 0.08  # one word with a swapped, dropped or doubled letter
    about_rate: float = 0.25  # prompts that put one of the topic's subjects in an `about` frame


def split_phrasings(prompts: list[tuple], key: str, seed: int,
                    val: float = DataConfig.val_phrasings,
                    test: float = DataConfig.test_phrasings) -> dict[str, list[tuple]]:
    """Divide prompt templates between the splits: shares `val` and `test` of them, at least
    one each when there are 3+, and the rest for training.

    With fewer than 3 (possible only for follow-ups), every split shares them all. The shares
    are small because every phrasing held out is one the model cannot learn from; for Guppy,
    10% in all still leaves about 1,000 unseen templates to measure generalisation with
    (docs/benchmarks.md, "Routing, part 3").
    """
    if len(prompts) < 3:
        return {split: prompts for split in SPLITS}
    order = list(range(len(prompts)))
    random.Random(f"{seed}:{key}").shuffle(order)
    n_test = max(1, round(test * len(order)))
    n_val = max(1, round(val * len(order)))
    picked = {"test": order[:n_test], "val": order[n_test:n_test + n_val],
              "train": order[n_test + n_val:]}
    return {split: [prompts[i] for i in sorted(idx)] for split, idx in picked.items()}


def split_topic(topic: Topic, seed: int, val: float, test: float,
                subjects: bool = False) -> dict[str, list[tuple]]:
    """A topic's prompt templates (or subjects) by split.

    Each phrasebook intent's are divided by the intent's name, so the phrasings a persona
    holds out from an intent are the same for every persona; the topic's own by its name.
    A topic that answers an intent may add fewer than 3 phrasings of its own: those are
    only trained on, since the intent's held-out phrasings already test the topic.
    """
    suffix = ":subjects" if subjects else ""
    groups = [(f"intent:{i.name}{suffix}", i.subjects if subjects else i.prompts)
              for i in topic.intents]
    groups.append((f"{topic.name}{suffix}", topic.subjects if subjects else topic.prompts))
    result: dict[str, list[tuple]] = {split: [] for split in SPLITS}
    for key, templates in groups:
        if topic.intents and len(templates) < 3:
            result["train"] += templates
            continue
        for split, part in split_phrasings(templates, key, seed, val, test).items():
            result[split] += part
    return result


class Composer:
    """Composes conversations for one persona; all randomness comes from one seeded rng."""

    def __init__(self, persona: Persona, cfg: DataConfig):
        self.persona, self.cfg = persona, cfg
        self.rng = random.Random(cfg.seed)
        shares = {"seed": cfg.seed, "val": cfg.val_phrasings, "test": cfg.test_phrasings}
        self.phrasings = {t.name: split_topic(t, **shares) for t in persona.topics}
        self.followups = split_phrasings(persona.followups, "followups", **shares)
        subjects = {t.name: split_topic(t, **shares, subjects=True) for t in persona.topics}
        self.subjects = {name: by_split for name, by_split in subjects.items()
                         if all(by_split.values())}  # topics with subjects to hold out
        # the pools an `about` frame expands with: the prompts', plus this split's subjects
        self.about_pools = {(name, split): {**persona.prompt_pools, SUBJECT: subjects}
                            for name, by_split in self.subjects.items()
                            for split, subjects in by_split.items()}
        total, self.cumulative = 0.0, []
        for topic in persona.topics:
            total += topic.weight
            self.cumulative.append(total)

    def pick_topic(self, other_than: Topic | None = None) -> Topic:
        topics = self.persona.topics
        while True:
            i = bisect.bisect(self.cumulative, self.rng.random() * self.cumulative[-1])
            topic = topics[min(i, len(topics) - 1)]
            if topic is not other_than or len(topics) == 1:
                return topic

    def expand(self, templates: list[tuple], pools: dict | None = None) -> str:
        """One of `templates`, expanded with `pools` (by default the replies' pools)."""
        nodes = templates[int(self.rng.random() * len(templates))]
        return template.expand(nodes, pools or self.persona.pools, self.rng)

    def conversation(self, split: str) -> dict:
        topic = self.pick_topic()
        exchanges = [(self.prompt(topic, split), self.expand(topic.replies), topic.name)]
        if self.rng.random() < self.cfg.multi_turn_share:
            for _ in range(self.rng.randint(1, 3)):
                previous = exchanges[-1][1]
                follow = topic.more and self.persona.followups
                if follow and self.rng.random() < self.cfg.followup_share:
                    asks = self.expand(self.followups[split], self.persona.prompt_pools)
                    user = self.styled(asks)
                    exchanges.append((user, self.fresh(topic.more, previous), topic.name))
                else:
                    topic = self.pick_topic(other_than=topic)
                    exchanges.append((self.prompt(topic, split),
                                      self.fresh(topic.replies, previous), topic.name))
        return conversation(exchanges)

    def fresh(self, templates: list[tuple], previous: str, tries: int = 8) -> str:
        """A reply that does not begin as the previous one did: a character that opens each
        answer with the sentence it just said sounds broken, and a model learns it."""
        for _ in range(tries):
            reply = self.expand(templates)
            if first_sentence(reply) != first_sentence(previous):
                return reply
        return reply

    def prompt(self, topic: Topic, split: str) -> str:
        if topic.name in self.subjects and self.persona.about \
                and self.rng.random() < self.cfg.about_rate:
            # "what about {subject}?": many short prompts whose only clue is the topic's word
            return self.styled(self.expand(self.persona.about,
                                           self.about_pools[topic.name, split]))
        return self.styled(self.expand(self.phrasings[topic.name][split],
                                       self.persona.prompt_pools))

    def styled(self, text: str) -> str:
        """Dress a phrasing the way people type: names, openers, punctuation, emoji, typos."""
        rng, cfg, persona = self.rng, self.cfg, self.persona
        body, end = _split_end(text)
        if persona.names and rng.random() < cfg.name_rate:
            name = rng.choice(persona.names)
            r = rng.random()  # half before ("guppy, are you ok"), half after, mostly bare
            if r < 0.5:
                body = f"{name}, {body}"
            else:
                body = f"{body}, {name}" if r < 0.7 else f"{body} {name}"
        if persona.openers and rng.random() < cfg.opener_rate:
            sep = "," if rng.random() < 0.3 else ""
            body = f"{rng.choice(persona.openers)}{sep} {body}"
        r = rng.random()
        if r < cfg.bare_rate:
            end = ""
        elif r < cfg.bare_rate + cfg.double_rate:
            end = (end or "!") * rng.randint(2, 3)
        text = body + end
        if persona.preambles and rng.random() < cfg.preamble_rate:
            text = f"{rng.choice(persona.preambles)} {text}"
        if persona.emoji and rng.random() < cfg.emoji_rate:
            emoji = rng.choice(persona.emoji)
            text = f"{emoji} {text}" if rng.random() < 0.3 else f"{text} {emoji}"
        if rng.random() < cfg.typo_rate:
            text = _typo(text, rng)
        return normalize_user_text(text)


def _split_end(text: str) -> tuple[str, str]:
    """("are you ok", "?") from "are you ok?"; a prompt of only punctuation ("...") is all body."""
    body = text.rstrip("?!.")
    return (body, text[len(body):]) if body.strip() else (text, "")


def _typo(text: str, rng: random.Random) -> str:
    """One common typing slip in one word of four letters or more."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not candidates:
        return text
    i = rng.choice(candidates)
    w, k = words[i], rng.randrange(1, len(words[i]) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        w = w[:k] + w[k + 1] + w[k] + w[k + 2:]  # swap two letters
    elif kind == 1:
        w = w[:k] + w[k + 1:]  # drop one
    else:
        w = w[:k] + w[k] + w[k:]  # double one
    words[i] = w
    return " ".join(words)


def compose(persona: Persona, cfg: DataConfig) -> dict[str, list[dict]]:
    """Compose `cfg.n` conversations and divide them into honest train/val/test splits.

    The same persona and config give the same conversations, byte for byte.
    """
    if cfg.n < 3:
        raise ConfigError("DataConfig", "n", cfg.n, "too few conversations; ask for at least 3")
    for name in ("val_phrasings", "test_phrasings"):
        if not 0 < getattr(cfg, name) < 1 or cfg.val_phrasings + cfg.test_phrasings >= 1:
            raise ConfigError("DataConfig", name, getattr(cfg, name),
                              f"with val_phrasings {cfg.val_phrasings} and test_phrasings "
                              f"{cfg.test_phrasings}, no phrasings are left to hold out or "
                              "to train on; give each a share above 0, together below 1")
    composer = Composer(persona, cfg)
    n_val = max(1, round(cfg.n * cfg.val_share))
    n_test = max(1, round(cfg.n * cfg.test_share))
    unseen = persona_test_prompts(persona)
    train: list[dict] = []
    while len(train) < cfg.n - n_val - n_test:
        conv = composer.conversation("train")
        if not any(user in unseen for user, _ in turns(conv)):
            train.append(conv)
    train_prompts = {user for conv in train for user, _ in turns(conv)}
    train_pairs = {pair for conv in train for pair in turns(conv)}
    splits = {"train": train}
    for split, count in (("val", n_val), ("test", n_test)):
        kept: list[dict] = []
        tries = 0
        while len(kept) < count:
            tries += 1
            if tries > 50 * count + 1000:
                raise GuppyError(f"{persona.path}: cannot draw {count} {split} conversations "
                                 "unseen in training; give the topics more varied prompts")
            conv = composer.conversation(split)
            pairs = turns(conv)
            if pairs[0][0] in train_prompts or any(p in train_pairs for p in pairs):
                continue
            kept.append(conv)
        splits[split] = kept
    return splits


def persona_test_path(persona: Persona) -> Path:
    """`guppy.toml` -> `guppy.test.toml` beside it: the hand-written persona test."""
    path = Path(persona.path)
    return path.with_name(path.stem + ".test.toml")


def persona_test_prompts(persona: Persona) -> set[str]:
    """The single-turn prompts of the persona's hand-written test, as training would spell
    them: training never holds one, so that the test asks only what it has not seen (a
    phrasebook shared by many personas could otherwise say one by chance). The scripted
    conversations' follow-ups ("why?") are everyday phrases and are not held out."""
    path = persona_test_path(persona)
    if not path.is_file():
        return set()
    try:
        prompts = tomllib.loads(path.read_text(encoding="utf-8")).get("prompts", [])
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return set()  # `guppy eval` reports a broken test file with its own clear error
    return {normalize_user_text(p["text"]) for p in prompts
            if isinstance(p, dict) and isinstance(p.get("text"), str)}


def write(splits: dict[str, list[dict]], persona: Persona, cfg: DataConfig, out: Path) -> None:
    """Write the splits, a copy of the persona and meta.json into `out`, all or nothing.

    The files are renamed into place only once all are written (atomic.py), so an
    interrupted run leaves the earlier data as it was.
    """
    out.mkdir(parents=True, exist_ok=True)
    files = {f"{s}.jsonl": "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in splits[s])
             for s in SPLITS}
    files["persona.toml"] = persona.source
    test = persona_test_path(persona)
    if test.is_file():  # the hand-written persona test travels with the data, for `guppy eval`
        files["persona.test.toml"] = test.read_text(encoding="utf-8")
    meta = {"persona": persona.name, "persona_file": persona.path, "config": asdict(cfg),
            "conversations": {s: len(splits[s]) for s in SPLITS}}
    files["meta.json"] = json.dumps(meta, indent=2) + "\n"
    atomic_write_all({out / name: text for name, text in files.items()})


def read_split(folder: Path, split: str) -> list[dict]:
    """Read one split's conversations, with a clear error if the folder is not data."""
    path = Path(folder) / f"{split}.jsonl"
    if not path.is_file():
        raise GuppyError(f"{path}: missing; create the data with `guppy data --out {folder}`")
    convs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                conv = json.loads(line)
                turns(conv)
            except (json.JSONDecodeError, KeyError, TypeError, IndexError):
                raise GuppyError(f"{path}:{lineno}: not a conversation in the chat format; "
                                 "regenerate it with `guppy data`") from None
            convs.append(conv)
    return convs


def stats(folder: Path) -> dict:
    """Figures that show the data's variety and the honesty of its splits."""
    splits = {s: read_split(folder, s) for s in SPLITS}
    result: dict = {"splits": {}}
    train_pairs = {p for c in splits["train"] for p in turns(c)}
    train_prompts = {u for u, _ in train_pairs}
    train_replies = {r for _, r in train_pairs}
    for split, convs in splits.items():
        pairs = [p for c in convs for p in turns(c)]
        firsts = [turns(c)[0][0] for c in convs]
        row = {
            "conversations": len(convs),
            "distinct_prompts": len({u for u, _ in pairs}),
            "distinct_replies": len({r for _, r in pairs}),
            "mean_prompt_words": _mean(len(u.split()) for u, _ in pairs),
            "mean_reply_words": _mean(len(r.split()) for _, r in pairs),
            "multi_turn_share": _mean(len(c["messages"]) > 2 for c in convs),
        }
        if split != "train":
            row["first_prompts_in_train"] = _mean(u in train_prompts for u in firsts)
            row["pairs_in_train"] = _mean(p in train_pairs for p in pairs)
            row["replies_in_train"] = _mean(r in train_replies for _, r in pairs)
        result["splits"][split] = row
    result["topics"] = dict(sorted(Counter(c["topic"] for s in splits.values() for c in s).items()))
    return result


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def format_stats(s: dict) -> str:
    keys = list(s["splits"]["test"])
    lines = [f"{'':<24}" + "".join(f"{split:>10}" for split in SPLITS)]
    for key in keys:
        cells = []
        for split in SPLITS:
            v = s["splits"][split].get(key)
            cells.append("-" if v is None else f"{v:.1%}" if key.endswith(("share", "train"))
                         else f"{v:.1f}" if isinstance(v, float) else f"{v:,}")
        lines.append(f"{key:<24}" + "".join(f"{c:>10}" for c in cells))
    lines.append(f"\nconversations per topic ({len(s['topics'])} topics):")
    lines += [f"  {count:>6,}  {topic}" for topic, count in s["topics"].items()]
    return "\n".join(lines)
