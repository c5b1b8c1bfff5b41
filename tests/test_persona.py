"""Every persona error names the file, the topic and the field, and exits 2 writing nothing."""

import re

import pytest

from guppylm import data, persona
from guppylm.errors import GuppyError

from conftest import TINY_PERSONA, run_cli


@pytest.mark.parametrize("name", ["guppy", "fern"])
def test_builtin_personas_load(name):
    p = persona.load(name)
    assert p.topics and p.pools


def test_guppy_covers_the_topics_it_promises():
    p = persona.load("guppy")
    assert len(p.topics) >= 60
    assert p.lowercase and p.max_words <= 40


def test_fern_is_a_different_character():
    fern, guppy = persona.load("fern"), persona.load("guppy")
    assert len(fern.topics) >= 20
    assert fern.name != guppy.name and not fern.lowercase


def broken(old: str, new: str) -> str:
    assert old in TINY_PERSONA, old
    return TINY_PERSONA.replace(old, new, 1)


def with_topic(*tables: str) -> str:
    """The tiny persona with more [[topics]] tables at the end."""
    return TINY_PERSONA + "".join(f"\n[[topics]]\n{t}\n" for t in tables)


BAD_PERSONAS = {
    "malformed toml": (broken('name = "Minnow"', 'name = "Minnow'), "malformed TOML"),
    "unknown slot": (broken("i eat {food}.", "i eat {fod}."),
                     "topic 'food', replies[0]: unknown slot {fod}; did you mean {food}?"),
    "empty pool": (broken('feel = ["warm", "cool", "nice"]', "feel = []"),
                   "[slots] feel: empty pool"),
    "no prompts": (broken('prompts = ["hi", "hello[ there]", "good (morning|evening)"]',
                          "prompts = []"), "topic 'hello', prompts: 0 given"),
    "no replies": (broken('replies = ["hello. [the water is {feel}.]", "hi. [i am swimming.]"]',
                          "replies = []"), "topic 'hello', replies: none given"),
    "recursive slot": (broken('feel = ["warm", "cool", "nice"]', 'feel = ["very {feel}"]'),
                       "recursive slot (feel -> feel)"),
    "capital letters": (broken("i eat {food}.", "I eat {food}."),
                        "topic 'food', replies[0]: 'I eat' has capital letters"),
    "capital in a slot": (broken('"flakes"', '"Flakes"'), "slot {food} entry 0"),
    "too many words": (broken("max_words = 20", "max_words = 4"),
                       "topic 'food', replies[0]: can expand to 11 words"),
    "unknown field": (broken("max_words = 20", "max_word = 20"),
                      "[voice]: unknown field 'max_word'; did you mean 'max_words'?"),
    "bad template": (broken("i eat {food}.", "i eat (food."),
                     "topic 'food', replies[0]: '(' at character 7 is never closed"),
    "no topics": (TINY_PERSONA.split("[[topics]]")[0], "no topics"),
    "bar in a topic name": (broken('name = "water"', 'name = "water | tank"'),
                            "topic 'water | tank', name: must not contain '|'"),
    "frame without subject": (broken('about = ["what about {subject}?"', 'about = ["what about?"'),
                              "[user] about[0]: no {subject} in 'what about?'"),
    "subjects without frames": (broken('about = ["what about {subject}?", "{subject}?"]', ""),
                                "topic 'food', subjects: given, but [user] about has no frames"),
    "pool named subject": (broken('[slots]', '[slots]\nsubject = ["x"]'),
                           "[slots] subject: this name is kept"),
    "unknown slot in a subject": (broken('"dinner"', '"{dinnr}"'),
                                  "topic 'food', subjects[1]: unknown slot {dinnr}"),
    # a persona built on the phrasebook's intents
    "unknown intent": (with_topic('intent = "gretting"\nreplies = ["hi."]'),
                       "topic 'gretting', intent: unknown intent 'gretting'; "
                       "did you mean 'greeting'?"),
    "intent without replies": (with_topic('intent = "greeting"\nreplies = []'),
                               "topic 'greeting', replies: none given; a topic that answers "
                               "intent 'greeting' needs replies of its own: add at least one"),
    "intent answered twice": (with_topic('intent = "joke"\nreplies = ["ha."]',
                                         'name = "fun"\nintent = "joke"\nreplies = ["ho."]'),
                              "topic 'fun', intent: 'joke' is already answered by topic 'joke'"),
    "intent named twice": (with_topic('intent = ["joke", "joke"]\nreplies = ["ha."]'),
                           "topic 'joke', intent: 'joke' named twice"),
    "intent not a name": (with_topic('name = "x"\nintent = 3\nreplies = ["ha."]'),
                          "topic 'x', intent: must be an intent's name"),
    "pool the phrasebook uses": (with_topic('intent = "joke"\nreplies = ["ha."]').replace(
        "[slots]", '[slots]\nu_pre = ["so"]'), "[slots] u_pre: the phrasebook uses this name"),
    "intent but no names": (with_topic('intent = "joke"\nreplies = ["ha."]').replace(
        'names = ["minnow", "little one"]\n', ""), "[user] names: none given"),
}


@pytest.mark.parametrize("case", sorted(BAD_PERSONAS))
def test_bad_persona_gives_one_clear_line_and_writes_nothing(case, tmp_path, capsys):
    text, message = BAD_PERSONAS[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "data", "--persona", path, "--n", 50, "--out", out_dir)
    assert code == 2
    assert err.startswith(f"guppy: error: {path}") and err.count("\n") == 1
    assert message in err
    assert not out_dir.exists()
    code, _, err = run_cli(capsys, "persona", "check", path)
    assert code == 2 and message in err


def test_missing_persona_file(capsys):
    code, _, err = run_cli(capsys, "persona", "check", "no/such/file.toml")
    assert code == 2 and "no such persona file" in err and "guppy" in err


def test_load_raises_guppy_error(tiny_persona):
    tiny_persona.write_text(broken("i eat {food}.", "i eat {nope}."))
    with pytest.raises(GuppyError, match="unknown slot"):
        persona.load(str(tiny_persona))


def test_a_persona_with_no_topics_says_it_answers_nothing(tmp_path, capsys):
    path = tmp_path / "empty.toml"
    path.write_text(TINY_PERSONA.split("[[topics]]")[0])
    code, _, err = run_cli(capsys, "persona", "check", path)
    assert code == 2 and err.count("\n") == 1
    assert f"{path}: [[topics]]: no topics; the persona answers no phrasebook intent and " \
           "has no topics of its own" in err


def test_a_topic_answering_an_intent_needs_no_prompts_and_is_named_after_it(tmp_path):
    path = tmp_path / "minnow.toml"
    path.write_text(with_topic('intent = "joke"\nreplies = ["ha."]',
                               'name = "bye"\nintent = ["goodbye", "good_night"]\n'
                               'replies = ["bye."]'))
    p = persona.load(str(path))
    assert [t.name for t in p.topics][-2:] == ["joke", "bye"]
    assert p.intents()["good_night"].name == "bye"


def test_persona_check_says_what_is_answered_left_out_and_thin(capsys):
    code, out, _ = run_cli(capsys, "persona", "check", "fern")
    assert code == 0
    assert re.search(r"phrasebook intents answered: \d+ of \d+", out)
    assert re.search(r"^  greeting +\d+ \(14 \+ \d+\) +8 +4  greeting$", out, re.MULTILINE)
    assert re.search(r"^left out \(\d+; .*\bpolitics\b", out, re.MULTILINE)


def test_persona_check_warns_of_a_topic_too_thin_to_learn(tmp_path, capsys):
    path = tmp_path / "minnow.toml"
    path.write_text(with_topic('name = "pebbles"\nprompts = ["pebbles?", "rocks?", "stones?"]\n'
                               'replies = ["i like pebbles.", "pebbles are nice."]'))
    code, out, _ = run_cli(capsys, "persona", "check", path)
    assert code == 0
    assert re.search(r"^warning: too thin to learn, fewer than \d+ prompt templates: .*"
                     r"\bpebbles \(3\)", out, re.MULTILINE)


def test_persona_new_writes_a_starter_that_passes_check(tmp_path, capsys):
    from guppylm.evaluate import load_persona_test

    out = tmp_path / "mochi.toml"
    code, said, _ = run_cli(capsys, "persona", "new", "Mochi", "--out", out)
    assert code == 0 and "mochi.test.toml" in said
    text = out.read_text()
    for name in persona.phrasebook().intent_names:  # every intent, with what it means
        assert f'intent = "{name}"' in text and f"# {name}: " in text
    p = persona.load(str(out))
    assert set(p.intents()) == set(persona.phrasebook().intent_names)
    assert any(not t.intents for t in p.topics)  # and an example topic of its own
    code, said, _ = run_cli(capsys, "persona", "check", out)
    assert code == 0 and "still have the starter's 'Rewrite me' replies" in said
    test = load_persona_test(out.with_name("mochi.test.toml"), p)
    assert test.prompts and test.conversations
    splits = data.compose(p, data.DataConfig(n=300))  # and composes data
    assert len(splits["train"]) == 270


def test_persona_new_never_overwrites(tmp_path, capsys):
    out = tmp_path / "mochi.toml"
    out.with_name("mochi.test.toml").write_text("mine")
    code, _, err = run_cli(capsys, "persona", "new", "Mochi", "--out", out)
    assert code == 2 and "mochi.test.toml: already exists" in err
    assert not out.exists() and out.with_name("mochi.test.toml").read_text() == "mine"
    code, _, err = run_cli(capsys, "persona", "new", "Mo{chi}", "--out", out)
    assert code == 2 and "not a usable name" in err


@pytest.mark.parametrize("given, expected", [
    (["--persona", "fern"], "runs/fern"),
    (["--persona", "fern", "--run", "elsewhere"], "elsewhere"),
    ([], "runs/guppy"),
])
def test_run_trains_into_a_folder_named_after_the_persona(given, expected, monkeypatch):
    from guppylm import cli

    seen = {}
    monkeypatch.setattr(cli, "run_pipeline", lambda name, d, t, quiet: seen.update(run=t.run))
    assert cli.main(["run", *given]) == 0
    assert seen["run"] == expected
