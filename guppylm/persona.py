"""A persona: one TOML file that describes a character, loaded and checked.

Layout of a persona file (see README.md, "Write your own persona"):

    name = "Guppy"                  # the character's name
    description = "..."             # one line, for people
    [voice]    lowercase, max_words # rules every reply must follow
    [user]     names, openers, followups, preambles, emoji   # how people talk to it
               about = ["what about {subject}?", ...]  # frames for a topic's subjects
    [slots]    pool = ["...", ...]  # word pools that templates draw from with {pool}
    [[topics]] name, prompts, replies, more, subjects, weight (all but the first three optional)

Every template is checked here, once, so that generation never meets a surprise: an
unknown or recursive slot, an empty pool, a topic without prompts or replies, or a reply
that could break the voice rules is reported with the file, the topic and the field.
"""

from __future__ import annotations

import difflib
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
_TOPIC_KEYS = {"name", "prompts", "replies", "more", "subjects", "weight"}
SUBJECT = "subject"  # the slot an `about` frame leaves for a topic's subjects


@dataclass
class Topic:
    name: str
    prompts: list[tuple]  # parsed templates; held-out phrasings are chosen among these
    replies: list[tuple]
    more: list[tuple]  # answers to a follow-up ("why?", "tell me more"); may be empty
    subjects: list[tuple] = field(default_factory=list)  # words for it, for the `about` frames
    weight: float = 1.0


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
    pools: dict[str, list[tuple]]
    topics: list[Topic] = field(default_factory=list)


def builtin_personas() -> list[str]:
    """Names of the personas shipped inside the package."""
    folder = resources.files("guppylm") / "personas"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


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
    where = str(path)
    try:
        source = path.read_text(encoding="utf-8")
        data = tomllib.loads(source)
    except UnicodeDecodeError:
        raise GuppyError(f"{where}: not UTF-8 text; save the file as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise GuppyError(f"{where}: malformed TOML ({e}); fix the syntax") from None
    return _build(data, where, source)


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
        raise GuppyError(f"{where}: no topics; add at least one [[topics]] table")
    persona = Persona(
        name=name,
        description=data.get("description", ""),
        path=where,
        source=source,
        lowercase=lowercase,
        max_words=max_words,
        names=_strings(user, "names", f"{where}: [user]"),
        openers=_strings(user, "openers", f"{where}: [user]"),
        preambles=_strings(user, "preambles", f"{where}: [user]"),
        emoji=_strings(user, "emoji", f"{where}: [user]"),
        followups=[_parse(t, pools, f"{where}: [user] followups[{i}]")
                   for i, t in enumerate(_strings(user, "followups", f"{where}: [user]"))],
        about=_parse_about(user, pools, f"{where}: [user]"),
        pools=pools,
    )
    seen: set[str] = set()
    for i, raw in enumerate(topics_raw):
        topic = _parse_topic(raw, i, pools, where)
        if topic.name in seen:
            raise GuppyError(f"{where}: topic '{topic.name}': name used twice; rename one")
        seen.add(topic.name)
        _check_voice(persona, topic, where)
        if topic.subjects and not persona.about:
            raise GuppyError(f"{where}: topic '{topic.name}', subjects: given, but [user] about "
                             "has no frames to put them in; add about = [\"what about "
                             "{subject}?\", ...]")
        persona.topics.append(topic)
    return persona


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


def _parse_about(user: dict, pools: dict, at: str) -> list[tuple]:
    frames = []
    for i, text in enumerate(_strings(user, "about", at)):
        nodes = _parse(text, {**pools, SUBJECT: []}, f"{at} about[{i}]")
        if SUBJECT not in template.slots_used(nodes):
            raise GuppyError(f"{at} about[{i}]: no {{{SUBJECT}}} in '{text}'; a frame must "
                             f"say where the topic's subject goes")
        frames.append(nodes)
    return frames


def _parse_topic(raw: object, i: int, pools: dict, where: str) -> Topic:
    if not isinstance(raw, dict):
        raise GuppyError(f"{where}: topics[{i}]: must be a table ([[topics]])")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise GuppyError(f"{where}: topics[{i}]: missing name; add name = \"...\"")
    at = f"{where}: topic '{name}'"
    if "|" in name or "\n" in name:
        raise GuppyError(f"{at}, name: must not contain '|' or a line break (the model writes "
                         "the topic's name before each reply); rename it")
    _no_unknown_keys(raw, _TOPIC_KEYS, at)
    prompts = _strings(raw, "prompts", at)
    replies = _strings(raw, "replies", at)
    if len(prompts) < MIN_PROMPTS:
        raise GuppyError(f"{at}, prompts: {len(prompts)} given, at least {MIN_PROMPTS} needed "
                         "(some phrasings are held out for validation and test); add more")
    if not replies:
        raise GuppyError(f"{at}, replies: none given; add at least one reply")
    weight = raw.get("weight", 1.0)
    if not isinstance(weight, int | float) or isinstance(weight, bool) or weight <= 0:
        raise GuppyError(f"{at}, weight: must be a number above 0")

    def parse_all(key: str, texts: list[str]) -> list[tuple]:
        return [_parse(t, pools, f"{at}, {key}[{j}]") for j, t in enumerate(texts)]

    return Topic(name=name, prompts=parse_all("prompts", prompts),
                 replies=parse_all("replies", replies),
                 more=parse_all("more", _strings(raw, "more", at)),
                 subjects=parse_all("subjects", _strings(raw, "subjects", at)),
                 weight=float(weight))


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


def _check_voice(persona: Persona, topic: Topic, where: str) -> None:
    """Every reply the topic can produce must follow the voice rules."""
    memo: dict = {}
    for key, templates in (("replies", topic.replies), ("more", topic.more)):
        for j, nodes in enumerate(templates):
            at = f"{where}: topic '{topic.name}', {key}[{j}]"
            text = template.longest(nodes, persona.pools, memo)
            if len(text.split()) > persona.max_words:
                raise GuppyError(f"{at}: can expand to {len(text.split())} words, over the voice "
                                 f"rule max_words = {persona.max_words}; shorten it")
            if persona.lowercase:
                _check_lowercase(nodes, persona.pools, at)


def _check_lowercase(nodes: tuple, pools: dict, at: str, inside: str = "") -> None:
    """Literal text, and every slot entry the template can reach, must be lowercase."""
    for text in template.literal_texts(nodes):
        if text != text.lower():
            raise GuppyError(f"{at}: {inside}'{text.strip()}' has capital letters, but the voice "
                             "rule is lowercase = true; write it in lowercase")
    for slot in sorted(template.slots_used(nodes)):
        for j, entry in enumerate(pools[slot]):
            _check_lowercase(entry, pools, at, inside=f"slot {{{slot}}} entry {j}: ")


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
