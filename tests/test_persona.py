"""Every persona error names the file, the topic and the field, and exits 2 writing nothing."""

import pytest

from guppylm import persona
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
