"""A persona: one TOML file that describes a character, loaded and checked.

Layout of a persona file (see README.md, "Write your own persona", and docs/personas.md):

    name = "Guppy"                  # the character's name
    description = "..."             # one line, for people
    [voice]    lowercase, max_words # rules every reply must follow
    [user]     names, openers, followups, preambles, emoji   # how people talk to it
               about = ["what about {subject}?", ...]  # frames for a topic's subjects
    [slots]    pool = ["...", ...]  # word pools that templates draw from with {pool}
    [[topics]] intent = "greeting", replies, more   # answers a phrasebook intent, or
    [[topics]] name, prompts, replies, more, subjects, weight   # a topic of its own

The phrasebook (guppylm/phrasebook/) holds the user's side of common intents: how people
greet, say goodbye, offer food, ask for a joke. A topic that names an intent gets its
phrasings and subjects; any `prompts` it gives are added to them. A persona that names an
intent also gets the phrasebook's [user] lists and user-side word pools, with its own added,
and phrasebook prompts call the character by its [user] names through the slot {name}.

Every template is checked here, once, so that generation never meets a surprise: an
unknown or recursive slot, an empty pool, a topic without prompts or replies, an unknown
intent, or a reply that could break the voice rules is reported with the file, the topic and
the field.
"""

from __future__ import annotations

import difflib
import functools
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from guppylm import template
from guppylm.errors import GuppyError

MIN_PROMPTS = 3  # a topic needs phrasings for train, and held-out ones for val and test

_TOP_KEYS = {"name", "description", "voice", "user", "slots", "topics"}
_VOICE_KEYS = {"lowercase", "max_words"}
_USER_KEYS = {"names", "openers", "followups", "preambles", "emoji", "about"}
_TOPIC_KEYS = {"name", "intent", "prompts", "replies", "more", "subjects", "weight"}
_USER_LISTS = ("openers", "followups", "preambles", "emoji", "about")  # shared by the phrasebook
_INTENT_KEYS = {"means", "prompts", "subjects"}
SUBJECT = "subject"  # the slot an `about` frame leaves for a topic's subjects
NAME = "name"  # the slot phrasebook prompts call the character by: its [user] names


@dataclass
class Intent:
    """What a user means ("greeting") and the many ways people say it, from the phrasebook."""
    name: str
    means: str  # one line: what the user means
    prompts: list[tuple]
    subjects: list[tuple]


@dataclass
class Topic:
    name: str
    prompts: list[tuple]  # its own phrasings; held-out ones are chosen among these
    replies: list[tuple]
    more: list[tuple]  # answers to a follow-up ("why?", "tell me more"); may be empty
    subjects: list[tuple] = field(default_factory=list)  # words for it, for the `about` frames
    weight: float = 1.0
    intents: list[Intent] = field(default_factory=list)  # the phrasebook intents it answers

    def all_prompts(self) -> list[tuple]:
        """Its own phrasings and those of every intent it answers."""
        return self.prompts + [p for intent in self.intents for p in intent.prompts]


@dataclass
class Persona:
    name: str
    description: str
    path: str
    source: str  # the file's text, copied into run folders
    lowercase: bool
    max_words: int
    names: list[str]
    openers: list[str]
    followups: list[tuple]
    preambles: list[str]  # unrelated lead-ins ("long day today.") said before some prompts
    emoji: list[str]
    about: list[tuple]  # frames like "what about {subject}?", filled with a topic's subjects
    pools: dict[str, list[tuple]]  # its [slots]: what replies draw from
    topics: list[Topic] = field(default_factory=list)
    # what prompts draw from: its pools, and with the phrasebook, the phrasebook's and {name}
    prompt_pools: dict[str, list[tuple]] = field(default_factory=dict)

    def intents(self) -> dict[str, Topic]:
        """Each phrasebook intent it answers -> the topic that answers it."""
        return {intent.name: topic for topic in self.topics for intent in topic.intents}


def builtin_personas() -> list[str]:
    """Names of the personas shipped inside the package."""
    folder = resources.files("guppylm") / "personas"
    return sorted(p.name[:-5] for p in folder.iterdir()
                  if p.name.endswith(".toml") and not p.name.endswith(".test.toml"))


def resolve(name_or_path: str) -> Path:
    """A built-in persona name ("guppy") or a path to a .toml file."""
    if name_or_path in builtin_personas():
        return Path(str(resources.files("guppylm") / "personas" / f"{name_or_path}.toml"))
    path = Path(name_or_path)
    if not path.is_file():
        known = ", ".join(builtin_personas())
        raise GuppyError(f"{name_or_path}: no such persona file; give a path to a .toml file "
                         f"or one of the built-in personas: {known}")
    return path


def load(name_or_path: str) -> Persona:
    """Read, parse and check a persona; raise GuppyError naming the file, topic and field."""
    path = resolve(name_or_path)
    source, data = _read_toml(path)
    return _build(data, str(path), source)


def _read_toml(path: Path) -> tuple[str, dict]:
    try:
        source = path.read_text(encoding="utf-8")
        return source, tomllib.loads(source)
    except UnicodeDecodeError:
        raise GuppyError(f"{path}: not UTF-8 text; save the file as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise GuppyError(f"{path}: malformed TOML ({e}); fix the syntax") from None


# ----------------------------------------------------------------------------- the phrasebook

@dataclass
class Phrasebook:
    """How people say common things, shared by every persona (guppylm/phrasebook/):
    user.toml holds the [user] lists and the user-side [slots]; intents/NAME.toml one intent."""
    folder: Path
    user: dict[str, list[str]]  # openers, followups, preambles, emoji, about
    pools: dict[str, list[tuple]]
    intent_names: list[str]
    parsed: dict[str, Intent] = field(default_factory=dict)

    def intent(self, name: str) -> Intent:
        """One intent, parsed on first use: a persona names a few dozen of them."""
        if name not in self.parsed:
            self.parsed[name] = _load_intent(self.folder / "intents" / f"{name}.toml", self.pools)
        return self.parsed[name]

    def pools_for(self, own: dict, names: list[str], where: str) -> dict[str, list[tuple]]:
        """What a persona's prompts draw from: the phrasebook's pools, its own, and {name}."""
        for pool in own:
            if pool in self.pools or pool == NAME:
                raise GuppyError(f"{where}: [slots] {pool}: the phrasebook uses this name "
                                 f"(in {self.folder}); rename the pool")
        if not names:
            raise GuppyError(f"{where}: [user] names: none given, but phrasebook prompts call "
                             f"the character by name ({{{NAME}}}); add names = [\"...\"]")
        return {**self.pools, **own, NAME: [(template.Text(n),) for n in names]}


@functools.cache
def phrasebook() -> Phrasebook:
    """The phrasebook shipped with the package, read once per process."""
    folder = Path(str(resources.files("guppylm") / "phrasebook"))
    where = str(folder / "user.toml")
    data = _read_toml(folder / "user.toml")[1]
    _no_unknown_keys(data, {"user", "slots"}, where)
    user = _table(data, "user", where)
    _no_unknown_keys(user, set(_USER_LISTS), f"{where}: [user]")
    lists = {key: _strings(user, key, f"{where}: [user]") for key in _USER_LISTS}
    names = sorted(p.name[:-5] for p in (folder / "intents").iterdir()
                   if p.name.endswith(".toml"))
    return Phrasebook(folder, lists, _parse_slots(_table(data, "slots", where), where), names)


def _load_intent(path: Path, pools: dict) -> Intent:
    where = str(path)
    data = _read_toml(path)[1]
    _no_unknown_keys(data, _INTENT_KEYS, where)
    pools = {**pools, NAME: [(template.Text("you"),)]}
    prompts = _strings(data, "prompts", where)
    if len(prompts) < MIN_PROMPTS:
        raise GuppyError(f"{where}: prompts: {len(prompts)} given, at least {MIN_PROMPTS} "
                         "needed; add more")
    return Intent(name=path.name[:-5], means=_string(data, "means", where),
                  prompts=[_parse(t, pools, f"{where}: prompts[{j}]")
                           for j, t in enumerate(prompts)],
                  subjects=[_parse(t, pools, f"{where}: subjects[{j}]")
                            for j, t in enumerate(_strings(data, "subjects", where))])


# ----------------------------------------------------------------------------- checks

def _build(data: dict, where: str, source: str) -> Persona:
    _no_unknown_keys(data, _TOP_KEYS, where)
    name = _string(data, "name", where)
    voice = _table(data, "voice", where)
    user = _table(data, "user", where)
    _no_unknown_keys(voice, _VOICE_KEYS, f"{where}: [voice]")
    _no_unknown_keys(user, _USER_KEYS, f"{where}: [user]")
    lowercase = voice.get("lowercase", False)
    max_words = voice.get("max_words", 60)
    if not isinstance(lowercase, bool):
        raise GuppyError(f"{where}: [voice] lowercase: must be true or false")
    if not isinstance(max_words, int) or isinstance(max_words, bool) or max_words < 1:
        raise GuppyError(f"{where}: [voice] max_words: must be a whole number of at least 1")

    pools = _parse_slots(_table(data, "slots", where), where)
    if SUBJECT in pools:
        raise GuppyError(f"{where}: [slots] {SUBJECT}: this name is kept for a topic's subjects "
                         "in [user] about; rename the pool")
    topics_raw = data.get("topics")
    if not isinstance(topics_raw, list) or not topics_raw:
        raise GuppyError(f"{where}: [[topics]]: no topics; the persona answers no phrasebook "
                         "intent and has no topics of its own; add [[topics]] tables with "
                         "intent = \"greeting\" and replies, or with a name, prompts and replies "
                         "(`guppy persona new NAME` writes a starter)")
    names = _strings(user, "names", f"{where}: [user]")
    lists = {key: _strings(user, key, f"{where}: [user]") for key in _USER_LISTS}
    prompt_pools = pools
    if any(isinstance(t, dict) and "intent" in t for t in topics_raw):
        book = phrasebook()
        prompt_pools = book.pools_for(pools, names, where)
        lists = {key: _merged(book.user[key], lists[key]) for key in _USER_LISTS}
    at_user = f"{where}: [user]"
    persona = Persona(
        name=name,
        description=data.get("description", ""),
        path=where,
        source=source,
        lowercase=lowercase,
        max_words=max_words,
        names=names,
        openers=lists["openers"],
        preambles=lists["preambles"],
        emoji=lists["emoji"],
        followups=[_parse(t, prompt_pools, f"{at_user} followups[{i}]")
                   for i, t in enumerate(lists["followups"])],
        about=_parse_about(lists["about"], prompt_pools, at_user),
        pools=pools,
        prompt_pools=prompt_pools,
    )
    seen: set[str] = set()
    lowercase_slots: set[str] = set()
    for i, raw in enumerate(topics_raw):
        topic = _parse_topic(raw, i, persona, where)
        if topic.name in seen:
            raise GuppyError(f"{where}: topic '{topic.name}': name used twice; rename one")
        seen.add(topic.name)
        answered = persona.intents()
        for intent in topic.intents:
            if intent.name in answered:
                raise GuppyError(f"{where}: topic '{topic.name}', intent: '{intent.name}' is "
                                 f"already answered by topic '{answered[intent.name].name}'; "
                                 "answer each intent in one topic (one topic may answer "
                                 "several: intent = [\"a\", \"b\"])")
            answered[intent.name] = topic
        _check_voice(persona, topic, where, lowercase_slots)
        if (topic.subjects or any(i.subjects for i in topic.intents)) and not persona.about:
            raise GuppyError(f"{where}: topic '{topic.name}', subjects: given, but [user] about "
                             "has no frames to put them in; add about = [\"what about "
                             "{subject}?\", ...]")
        persona.topics.append(topic)
    return persona


def _merged(shared: list[str], own: list[str]) -> list[str]:
    """The phrasebook's list, then the persona's own entries that it does not hold yet."""
    return shared + [entry for entry in own if entry not in shared]


def _parse_slots(slots: dict, where: str) -> dict[str, list[tuple]]:
    pools: dict[str, list[tuple]] = {}
    for name, entries in slots.items():
        at = f"{where}: [slots] {name}"
        if not template._SLOT_NAME.fullmatch(name):
            raise GuppyError(f"{at}: bad slot name; use lowercase letters, digits and _")
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise GuppyError(f"{at}: must be a list of strings")
        if not entries:
            raise GuppyError(f"{at}: empty pool; give it at least one entry or remove it")
        pools[name] = [_parse(e, None, f"{at}[{j}]") for j, e in enumerate(entries)]
    for name in pools:  # every slot used inside a pool must exist too
        for j, entry in enumerate(pools[name]):
            _check_slots_exist(entry, pools, f"{where}: [slots] {name}[{j}]")
    _check_no_recursion(pools, where)
    return pools


def _parse_about(texts: list[str], pools: dict, at: str) -> list[tuple]:
    frames = []
    for i, text in enumerate(texts):
        nodes = _parse(text, {**pools, SUBJECT: []}, f"{at} about[{i}]")
        if SUBJECT not in template.slots_used(nodes):
            raise GuppyError(f"{at} about[{i}]: no {{{SUBJECT}}} in '{text}'; a frame must "
                             f"say where the topic's subject goes")
        frames.append(nodes)
    return frames


def _parse_topic(raw: object, i: int, persona: Persona, where: str) -> Topic:
    if not isinstance(raw, dict):
        raise GuppyError(f"{where}: topics[{i}]: must be a table ([[topics]])")
    value = raw.get("intent")
    first = value if isinstance(value, str) else \
        value[0] if isinstance(value, list) and value and isinstance(value[0], str) else None
    name = raw.get("name", first)  # a topic that answers an intent is named after it
    if not isinstance(name, str) or not name.strip():
        raise GuppyError(f"{where}: topics[{i}]: missing name; add name = \"...\" (or "
                         "intent = \"...\" to answer a phrasebook intent)")
    at = f"{where}: topic '{name}'"
    if "|" in name or "\n" in name:
        raise GuppyError(f"{at}, name: must not contain '|' or a line break (the model writes "
                         "the topic's name before each reply); rename it")
    _no_unknown_keys(raw, _TOPIC_KEYS, at)
    intents = _intents_of(raw, at)
    prompts = _strings(raw, "prompts", at)
    replies = _strings(raw, "replies", at)
    if not intents and len(prompts) < MIN_PROMPTS:
        raise GuppyError(f"{at}, prompts: {len(prompts)} given, at least {MIN_PROMPTS} needed "
                         "(some phrasings are held out for validation and test); add more, "
                         "or answer a phrasebook intent with intent = \"...\"")
    if not replies:
        who = f"a topic that answers intent '{intents[0].name}' needs replies of its own: " \
            if intents else ""
        raise GuppyError(f"{at}, replies: none given; {who}add at least one reply")
    weight = raw.get("weight", 1.0)
    if not isinstance(weight, int | float) or isinstance(weight, bool) or weight <= 0:
        raise GuppyError(f"{at}, weight: must be a number above 0")

    def parse_all(key: str, texts: list[str], pools: dict) -> list[tuple]:
        return [_parse(t, pools, f"{at}, {key}[{j}]") for j, t in enumerate(texts)]

    asks = persona.prompt_pools  # the user's side may use the phrasebook's pools and {name}
    return Topic(name=name, prompts=parse_all("prompts", prompts, asks),
                 replies=parse_all("replies", replies, persona.pools),
                 more=parse_all("more", _strings(raw, "more", at), persona.pools),
                 subjects=parse_all("subjects", _strings(raw, "subjects", at), asks),
                 weight=float(weight), intents=intents)


def _intents_of(raw: dict, at: str) -> list[Intent]:
    """The phrasebook intents a topic table names: intent = "a" or intent = ["a", "b"]."""
    value = raw.get("intent", [])
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) \
            or ("intent" in raw and not names):
        raise GuppyError(f"{at}, intent: must be an intent's name or a list of them, "
                         "e.g. intent = \"greeting\"")
    book = phrasebook() if names else None
    intents = []
    for n in names:
        if n not in book.intent_names:
            hint = difflib.get_close_matches(n, book.intent_names, n=1)
            fix = f"did you mean '{hint[0]}'?" if hint else \
                "`guppy persona new NAME` writes a starter that lists every intent"
            raise GuppyError(f"{at}, intent: unknown intent '{n}'; {fix}")
        if any(i.name == n for i in intents):
            raise GuppyError(f"{at}, intent: '{n}' named twice; name it once")
        intents.append(book.intent(n))
    return intents


def _parse(text: str, pools: dict | None, at: str) -> tuple:
    try:
        nodes = template.parse(text)
    except template.TemplateError as e:
        raise GuppyError(f"{at}: {e}") from None
    if not template.tidy(text):
        raise GuppyError(f"{at}: empty template; write some text or remove it")
    if pools is not None:
        _check_slots_exist(nodes, pools, at)
    return nodes


def _check_slots_exist(nodes: tuple, pools: dict, at: str) -> None:
    for slot in sorted(template.slots_used(nodes)):
        if slot not in pools:
            hint = difflib.get_close_matches(slot, list(pools), n=1)
            fix = f"did you mean {{{hint[0]}}}?" if hint else "add it to [slots] or fix the name"
            raise GuppyError(f"{at}: unknown slot {{{slot}}}; {fix}")


def _check_no_recursion(pools: dict[str, list[tuple]], where: str) -> None:
    uses = {name: set().union(*(template.slots_used(e) for e in entries))
            for name, entries in pools.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = " -> ".join(path[path.index(name):] + [name])
            raise GuppyError(f"{where}: [slots] {name}: recursive slot ({cycle}); "
                             "break the cycle")
        if name in done:
            return
        for used in sorted(uses[name]):
            visit(used, path + [name])
        done.add(name)

    for name in pools:
        visit(name, [])


def _check_voice(persona: Persona, topic: Topic, where: str, lowercase_slots: set) -> None:
    """Every reply the topic can produce must follow the voice rules. `lowercase_slots`
    holds the slots already found lowercase, so that each is checked once per persona."""
    memo: dict = {}
    for key, templates in (("replies", topic.replies), ("more", topic.more)):
        for j, nodes in enumerate(templates):
            at = f"{where}: topic '{topic.name}', {key}[{j}]"
            text = template.longest(nodes, persona.pools, memo)
            if len(text.split()) > persona.max_words:
                raise GuppyError(f"{at}: can expand to {len(text.split())} words, over the voice "
                                 f"rule max_words = {persona.max_words}; shorten it")
            if persona.lowercase:
                _check_lowercase(nodes, persona.pools, at, lowercase_slots)


def _check_lowercase(nodes: tuple, pools: dict, at: str, done: set, inside: str = "") -> None:
    """Literal text, and every slot entry the template can reach, must be lowercase."""
    for text in template.literal_texts(nodes):
        if text != text.lower():
            raise GuppyError(f"{at}: {inside}'{text.strip()}' has capital letters, but the voice "
                             "rule is lowercase = true; write it in lowercase")
    for slot in sorted(template.slots_used(nodes) - done):
        for j, entry in enumerate(pools[slot]):
            _check_lowercase(entry, pools, at, done, inside=f"slot {{{slot}}} entry {j}: ")
        done.add(slot)


def _no_unknown_keys(table: dict, allowed: set[str], at: str) -> None:
    for key in table:
        if key not in allowed:
            hint = difflib.get_close_matches(key, sorted(allowed), n=1)
            fix = f"did you mean '{hint[0]}'?" if hint else f"allowed: {', '.join(sorted(allowed))}"
            raise GuppyError(f"{at}: unknown field '{key}'; {fix}")


def _table(data: dict, key: str, where: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise GuppyError(f"{where}: [{key}]: must be a table, e.g. [{key}] on its own line")
    return value


def _string(data: dict, key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise GuppyError(f"{where}: {key}: missing; add {key} = \"...\"")
    return value


def _strings(table: dict, key: str, at: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise GuppyError(f"{at}, {key}: must be a list of strings")
    return value
