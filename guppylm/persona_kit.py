"""The persona kit: a starter persona to rewrite (`guppy persona new`), and what a persona
covers (`guppy persona check`): the phrasebook intents it answers and leaves out, how many
prompts and replies each topic has, and where a topic is too thin to learn.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from guppylm import template
from guppylm.atomic import atomic_write_all
from guppylm.errors import GuppyError
from guppylm.persona import NAME, Persona, Phrasebook, Topic, phrasebook

# A topic with fewer prompt templates than this is too thin to learn: the model routes the
# held-out and hand-written phrasings of such topics far less often. Templates count, not
# expansions: phrasings are held out per template, so a topic needs many of them to learn
# the meaning rather than a few sentences.
THIN_PROMPTS = 30
# With fewer replies than this, a topic answers the same thing again and again, in
# multi-turn conversations too (docs/personas.md).
THIN_REPLIES = 3
PLACEHOLDER = "Rewrite me"  # what the starter's replies begin with, until rewritten
# The starter lists the intents by theme; one the phrasebook adds later goes under "more".
THEMES = {
    "hello, goodbye and manners": ["greeting", "how_are_you", "goodbye", "good_night",
                                   "thanks", "sorry", "compliment", "insult"],
    "who the character is": ["name", "what_are_you", "are_you_a_bot", "age", "size", "colors",
                             "home", "daily_life", "favorite_thing", "past", "future",
                             "memory", "smart", "health", "stay_in_character"],
    "how it feels": ["feelings", "happy", "sad", "lonely", "bored", "curious", "tired",
                     "scared", "fears", "excited", "love", "friends", "dreams"],
    "the user's day": ["cheer_me_up", "hurry", "work", "visitors", "children", "new_pet",
                       "moving", "play", "joke", "advice"],
    "food, comfort and the room": ["food", "hungry", "drink", "taste", "hot", "cold", "light",
                                   "noise", "night", "sleep"],
    "the world": ["weather", "rain", "seasons", "favorite_season", "outside_world", "the_sea",
                  "cats", "humans", "music", "singing", "tv", "cars", "phones", "money",
                  "politics", "maths", "time", "meaning_of_life"],
}


# ----------------------------------------------------------------------------- new

def starter_files(name: str, out: Path) -> dict[Path, str]:
    """The starter persona `out` and its test beside it (`x.toml` -> `x.test.toml`)."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9 '-]{0,39}", name):
        raise GuppyError(f"{name!r}: not a usable name; use letters, digits, spaces, ' or -, "
                         "starting with a letter (at most 40)")
    test = out.with_name(out.stem + ".test.toml")
    return {out: starter_persona(name, out.name, test.name), test: starter_test(name)}


def write_starter(name: str, out: Path | None = None) -> list[Path]:
    """Write the starter persona and its test; refuse to replace existing files."""
    out = Path(out) if out else Path(slug(name) + ".toml")
    if out.suffix != ".toml":
        raise GuppyError(f"{out}: a persona file must end in .toml; choose another --out")
    files = starter_files(name, out)
    for path in files:
        if path.exists():
            raise GuppyError(f"{path}: already exists; choose another --out or move it away")
    if not out.parent.is_dir():
        raise GuppyError(f"{out.parent}: no such folder; create it or choose another --out")
    atomic_write_all(files)
    return list(files)


def slug(name: str) -> str:
    """"Captain Mochi" -> "captain-mochi": a file and run folder name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "persona"


def starter_persona(name: str, file: str, test_file: str) -> str:
    book = phrasebook()
    rng = random.Random(0)
    lines = [HEADER.format(name=name, file=file, test=test_file, slug=slug(name),
                           call=json.dumps(name.lower()))]
    for theme, intent_names in by_theme(book.intent_names).items():
        lines.append(f"# ---------------------------------------------------------- {theme}\n")
        lines += [starter_topic(book, n, name, rng) for n in intent_names]
    lines.append(OWN_TOPIC.format(name=name))
    return "\n".join(lines)


def by_theme(intent_names: list[str]) -> dict[str, list[str]]:
    themes = {theme: [n for n in names if n in intent_names] for theme, names in THEMES.items()}
    listed = {n for names in themes.values() for n in names}
    themes["more"] = [n for n in intent_names if n not in listed]
    return {theme: names for theme, names in themes.items() if names}


def starter_topic(book: Phrasebook, intent_name: str, name: str, rng: random.Random) -> str:
    """One intent's topic, with what it means and how people say it in comments."""
    intent = book.intent(intent_name)
    words = intent.name.replace("_", " ")
    return (f"# {intent.name}: {intent.means}\n"
            f"#   people say: {examples(intent.prompts, book.pools, rng)}\n"
            f'[[topics]]\nintent = "{intent.name}"\nreplies = [\n'
            f'  "{PLACEHOLDER}: how {name} answers {words}.",\n'
            f'  "{PLACEHOLDER} too: another way {name} answers {words}.",\n]\n')


def examples(prompts: list[tuple], pools: dict, rng: random.Random, n: int = 3) -> str:
    """A few short ways people say an intent, for the starter's comments."""
    pools = {**pools, NAME: [(template.Text("you"),)]}
    said: list[str] = []
    for _ in range(60):
        text = template.expand(rng.choice(prompts), pools, rng)
        if len(text) <= 40 and text not in said and "\n" not in text:
            said.append(text)
        if len(said) == n:
            break
    return ", ".join(json.dumps(s, ensure_ascii=False) for s in said)


HEADER = '''\
# {name}: a GuppyLM persona. A starter from `guppy persona new`: rewrite it.
#
# How it works. A persona is a character: how it speaks (its replies) and what people call
# it. What people *say* to it comes from the phrasebook that ships with GuppyLM
# (guppylm/phrasebook/): many ways to greet, say goodbye, offer food, ask for a joke...
# Each [[topics]] below answers one phrasebook intent: write its replies, in your
# character's voice. The data composer pairs every way of asking with every reply, so each
# reply must answer every way of asking. A prompt this file gives to an intent's topic is
# added to the phrasebook's.
#
# What to do:
#   1. Fill in description, [voice] and [user] names below.
#   2. Rewrite the replies of the intents {name} should answer (2 to 8 each; a few (a|b)
#      choices in each give the model variety). Delete the [[topics]] of intents {name}
#      should not answer. One topic may answer several: intent = ["goodbye", "good_night"].
#   3. Add topics of its own for what only {name} talks about (an example is at the end).
#   4. `guppy persona check {file}` says what is answered, left out, or too thin.
#   5. Rewrite {test}: prompts written the way people type, not copied from here.
#   6. `guppy run --persona {file}` trains a model on it, into runs/{slug}/.
#
# Template syntax, in prompts and replies:
#   {{pool}}   a random entry of a [slots] pool (entries may be templates too)
#   (a|b)    one of the alternatives
#   [text]   optional: included half of the time
# Replies follow [voice]: at most max_words words; with lowercase = true, no capital letters.
# A reply may also add `more` (answers to "why?", "tell me more") and a `weight` (how often
# the topic comes up; 1 by default). Prompts are written plain: the composer adds names,
# openers, typos and emoji by itself.

name = "{name}"
description = "one line about who {name} is, for people"

[voice]
lowercase = false  # true: every reply in lowercase
max_words = 40  # the longest a reply may be, in words

[user]
# what people call {name}; phrasebook prompts use these through {{name}}
names = [{call}]
# also possible, each added to the phrasebook's: openers, followups, preambles, emoji, about

[slots]
# word pools the replies draw from with {{pool}}, e.g. "I feel {{mood}} today."
mood = ["calm", "happy", "sleepy"]

# =========================================================== phrasebook intents
'''

OWN_TOPIC = '''\
# =========================================================== topics of its own
# A topic no intent covers: a name, prompts (at least 3, and 30 or more in the styles people
# type, or the model will not learn it; see `guppy persona check`), replies, and optionally
# more and subjects (words for it, asked about in the phrasebook's frames: "what about
# {{subject}}?").
[[topics]]
name = "favourite_place"
prompts = [
  "where is your favourite place?",
  "(which|what) place do you like (best|most)?",
  "do you have a (favourite|special) (place|spot)?",
]
replies = ["{PLACEHOLDER}: the place {name} likes best."]
more = ["{PLACEHOLDER}: why {name} likes that place."]
subjects = ["your favourite place", "your special spot"]
'''.replace("{PLACEHOLDER}", PLACEHOLDER)


def starter_test(name: str) -> str:
    return TEST.format(name=name, call=name.lower())


TEST = '''\
# {name}'s persona test: hand-written prompts that `guppy eval` (and `guppy run`) asks the
# trained model. Write it yourself, the way people really type, and do not copy prompts
# from the phrasebook or the persona file: it measures how the model answers what it has
# never seen (training never holds a prompt written here).
#
# Each prompt names the topic that should answer it (a topic answering an intent is named
# after the intent unless it has a name of its own), a style (plain, shouting, typos,
# slang, rambling, emoji, foreign, injection, minimal), and `expect`: words an on-topic
# reply would use, taken from that topic's replies. Aim for 60 or more prompts, every
# topic at least once, and a few scripted [[conversations]].

[[prompts]]
text = "hiya {call}, i'm home!"
topic = "greeting"
style = "plain"
expect = ["greeting"]

[[prompts]]
text = "TELL ME SOMETHING FUNNY"
topic = "joke"
style = "shouting"
expect = ["joke"]

[[prompts]]
text = "ok gotta run, cya"
topic = "goodbye"
style = "slang"
expect = ["goodbye"]

[[conversations]]
name = "hello, a joke, goodbye"
turns = [
  {{ text = "hey there", topic = "greeting", expect = ["greeting"] }},
  {{ text = "make me laugh", topic = "joke", expect = ["joke"] }},
  {{ text = "bye for now", topic = "goodbye", expect = ["goodbye"] }},
]
'''


# ----------------------------------------------------------------------------- check

@dataclass
class TopicCoverage:
    name: str
    intents: list[str]
    own_prompts: int
    phrasebook_prompts: int
    replies: int
    more: int
    placeholders: int  # replies still as the starter wrote them

    @property
    def prompts(self) -> int:
        return self.own_prompts + self.phrasebook_prompts


@dataclass
class Coverage:
    answered: dict[str, str]  # intent -> the topic that answers it
    left_out: list[str]
    topics: list[TopicCoverage]
    warnings: list[str] = field(default_factory=list)


def coverage(persona: Persona) -> Coverage:
    """Which phrasebook intents the persona answers, which it leaves out, what each topic
    holds, and warnings where a topic is too thin to learn."""
    answered = {intent: topic.name for intent, topic in persona.intents().items()}
    left_out = [n for n in phrasebook().intent_names if n not in answered]
    topics = [_topic_coverage(t) for t in persona.topics]
    warnings = []
    few_prompts = [f"{t.name} ({t.prompts})" for t in topics if t.prompts < THIN_PROMPTS]
    if few_prompts:
        warnings.append(f"too thin to learn, fewer than {THIN_PROMPTS} prompt templates: "
                        f"{', '.join(few_prompts)}; add prompts the ways people type (plain, "
                        "slang, typos, long messages, other languages), or answer a phrasebook "
                        "intent that fits")
    few_replies = [f"{t.name} ({t.replies})" for t in topics
                   if t.replies < THIN_REPLIES and not t.placeholders]
    if few_replies:
        warnings.append(f"fewer than {THIN_REPLIES} replies, so they will say the same thing "
                        f"again and again: {', '.join(few_replies)}; add replies")
    starters = [t.name for t in topics if t.placeholders]
    if starters:
        listed = ", ".join(starters[:5]) + (", ..." if len(starters) > 5 else "")
        warnings.append(f"{len(starters)} topics still have the starter's '{PLACEHOLDER}' "
                        f"replies ({listed}); rewrite them in the character's voice")
    return Coverage(answered, left_out, topics, warnings)


def _topic_coverage(topic: Topic) -> TopicCoverage:
    placeholders = sum(PLACEHOLDER in "".join(template.literal_texts(r)) for r in topic.replies)
    return TopicCoverage(name=topic.name, intents=[i.name for i in topic.intents],
                         own_prompts=len(topic.prompts),
                         phrasebook_prompts=sum(len(i.prompts) for i in topic.intents),
                         replies=len(topic.replies), more=len(topic.more),
                         placeholders=placeholders)


def format_coverage(c: Coverage) -> str:
    total = len(c.answered) + len(c.left_out)
    lines = [f"phrasebook intents answered: {len(c.answered)} of {total}"]
    width = max([len(t.name) for t in c.topics] + [5])
    lines.append(f"  {'topic':<{width}}  {'prompts (own + phrasebook)':>26}  replies  more"
                 "  intents")
    for t in c.topics:
        prompts = f"{t.prompts} ({t.own_prompts} + {t.phrasebook_prompts})"
        thin = "  (thin)" if t.prompts < THIN_PROMPTS or \
            (t.replies < THIN_REPLIES and not t.placeholders) else ""
        lines.append(f"  {t.name:<{width}}  {prompts:>26}  {t.replies:>7}  {t.more:>4}"
                     f"  {', '.join(t.intents) or '(its own)'}{thin}")
    if c.left_out:
        lines.append(f"left out ({len(c.left_out)}; such messages get the closest topic "
                     "instead): " + ", ".join(c.left_out))
    lines += [f"warning: {w}" for w in c.warnings]
    return "\n".join(lines)
