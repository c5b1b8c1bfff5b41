"""The phrasebook: every intent loads and stays generic, topics that name intents get its
phrasings, and the held-out splits stay honest for the personas built on it."""

import re

import pytest

from guppylm import data, persona, template
from guppylm.chat_format import turns
from guppylm.persona import NAME

from conftest import TINY_PERSONA

# Words that would tie a phrasebook prompt to one character; it names the character
# through {name} instead.
CHARACTER_WORDS = re.compile(r"\b(guppy|guppies|fish|fishy|aquarium|tank|fins?|gills?|fern|"
                             r"houseplant|minnow|worms?|larvae|pell?ets|spirulina|gusanos|"
                             r"lombrices|vermetti|flocos|vet|pet stores?|pet shops?)\b",
                             re.IGNORECASE)

# The tiny persona, answering two phrasebook intents besides its own topics.
WITH_INTENTS = TINY_PERSONA + '''
[[topics]]
intent = "greeting"
prompts = ["ahoy {name}, it is me"]
replies = ["hello hello. [the water is {feel}.]", "oh, hi."]

[[topics]]
name = "bye"
intent = ["goodbye", "good_night"]
replies = ["bye. [sleep well.]"]
'''


@pytest.fixture
def with_intents(tmp_path):
    path = tmp_path / "minnow.toml"
    path.write_text(WITH_INTENTS)
    return persona.load(str(path))


def test_every_intent_loads_with_a_meaning_and_many_phrasings():
    book = persona.phrasebook()
    assert len(book.intent_names) >= 60
    for name in book.intent_names:
        intent = book.intent(name)
        assert intent.name == name and intent.means.strip()
        assert len(intent.prompts) >= 40, name  # enough to hold some out and still learn
        assert intent.subjects, name


def test_phrasebook_prompts_never_name_a_character():
    book = persona.phrasebook()
    for name in book.intent_names:
        intent = book.intent(name)
        for nodes in intent.prompts + intent.subjects:
            text = " ".join(template.literal_texts(nodes))
            assert not CHARACTER_WORDS.search(text), (name, text)


def test_the_intent_list_in_the_notes_matches_the_phrasebook():
    """docs/personas.md lists every intent, one line each, as the starter does."""
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "personas.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^- `([a-z_]+)`: ", doc, re.MULTILINE))
    assert listed == set(persona.phrasebook().intent_names)


def test_a_topic_gets_its_intents_phrasings_and_keeps_its_own(with_intents):
    book = persona.phrasebook()
    greeting = next(t for t in with_intents.topics if t.name == "greeting")
    assert [i.name for i in greeting.intents] == ["greeting"]
    assert len(greeting.all_prompts()) == len(book.intent("greeting").prompts) + 1
    bye = next(t for t in with_intents.topics if t.name == "bye")
    assert [i.name for i in bye.intents] == ["goodbye", "good_night"]
    assert set(with_intents.intents()) == {"greeting", "goodbye", "good_night"}
    # the phrasebook's [user] lists and pools come along, the persona's own added
    assert "why?" in [template.tidy("".join(template.literal_texts(f)))
                      for f in with_intents.followups]
    assert {"u_pre", "feel", NAME} <= set(with_intents.prompt_pools)
    assert "u_pre" not in with_intents.pools  # replies draw from the persona's pools only


def test_name_slot_is_filled_with_the_personas_names(with_intents):
    names = {"minnow", "little one"}
    assert {template.tidy("".join(template.literal_texts(e)))
            for e in with_intents.prompt_pools[NAME]} == names
    plain = data.DataConfig(n=3000, name_rate=0, opener_rate=0, preamble_rate=0, typo_rate=0)
    splits = data.compose(with_intents, plain)
    prompts = [u for c in splits["train"] for u, _ in turns(c)]
    assert any(n in p for p in prompts for n in names)  # only {name} can have put them there


def test_intent_phrasings_are_held_out_alike_for_every_persona(with_intents):
    """The phrasebook divides an intent's phrasings by the intent: the same held out for the
    tiny persona and for Fern, so a template tested for one is never trained for another."""
    fern = persona.load("fern")
    shares = {"seed": 0, "val": 0.04, "test": 0.06}
    mine = data.split_topic(next(t for t in with_intents.topics if t.name == "bye"), **shares)
    ferns = data.split_topic(next(t for t in fern.topics if t.name == "goodbye"), **shares)
    goodbye = {id(p) for p in persona.phrasebook().intent("goodbye").prompts}
    for split in data.SPLITS:
        assert [p for p in mine[split] if id(p) in goodbye] == \
            [p for p in ferns[split] if id(p) in goodbye]
    assert all(mine[split] for split in data.SPLITS)


def test_a_few_own_phrasings_of_an_intent_topic_are_trained_on(with_intents):
    greeting = next(t for t in with_intents.topics if t.name == "greeting")
    split = data.split_topic(greeting, seed=0, val=0.04, test=0.06)
    own = greeting.prompts[0]
    assert own in split["train"] and own not in split["val"] + split["test"]


@pytest.mark.parametrize("name", ["guppy", "fern", "dusty"])
def test_built_in_personas_keep_honest_splits(name):
    """No composed test prompt is a training prompt, and no hand-written test prompt is
    ever trained on (a shared phrasebook could otherwise say one by chance)."""
    p = persona.load(name)
    splits = data.compose(p, data.DataConfig(n=20_000))
    train_prompts = {u for c in splits["train"] for u, _ in turns(c)}
    for split in ("val", "test"):
        assert not any(turns(c)[0][0] in train_prompts for c in splits[split])
    hand_written = data.persona_test_prompts(p)
    assert len(hand_written) >= 80 and not hand_written & train_prompts
    assert {c["topic"] for c in splits["train"]} == {t.name for t in p.topics}


def test_the_personas_answer_intents_and_keep_topics_of_their_own():
    guppy, fern, dusty = persona.load("guppy"), persona.load("fern"), persona.load("dusty")
    assert len(guppy.intents()) >= 60 and len(fern.intents()) >= 35
    assert len(dusty.intents()) >= 60
    for p in (guppy, fern, dusty):
        own = [t for t in p.topics if not t.intents]
        assert own and all(len(t.prompts) >= 3 for t in own)
