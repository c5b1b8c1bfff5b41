"""Shared fixtures: a tiny persona written for the tests, and helpers to run the CLI."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from guppylm.cli import main

TINY_PERSONA = textwrap.dedent('''
    name = "Minnow"
    description = "a tiny test fish"

    [voice]
    lowercase = true
    max_words = 20

    [user]
    names = ["minnow", "little one"]
    openers = ["hey", "so"]
    followups = ["why?", "(really|truly)?", "tell me more"]
    about = ["what about {subject}?", "{subject}?"]

    [slots]
    food = ["flakes", "pellets", "a (small|tiny) worm"]
    feel = ["warm", "cool", "nice"]

    [[topics]]
    name = "food"
    prompts = ["are you hungry?", "what do you (eat|like to eat)?", "(do you want|want) food?",
               "what is your favorite (food|snack)?", "(is it|when is) dinner time?"]
    replies = ["i eat {food}. [{food} is the best.]", "yes. [always. ]i want {food}."]
    more = ["because {food} is good."]
    subjects = ["snacks", "dinner", "(the|your) flakes", "worms", "breakfast", "feeding time"]

    [[topics]]
    name = "water"
    prompts = ["how is the water?", "is the water (warm|cold)?",
               "(do you like|how do you like) the water?",
               "is your tank (clean|nice)?"]
    replies = ["the water is {feel}. [i like it.]", "{feel} water. [good for swimming.]"]
    more = ["water is my whole world."]

    [[topics]]
    name = "hello"
    prompts = ["hi", "hello[ there]", "good (morning|evening)"]
    replies = ["hello. [the water is {feel}.]", "hi. [i am swimming.]"]
''')


@pytest.fixture
def tiny_persona(tmp_path: Path) -> Path:
    path = tmp_path / "minnow.toml"
    path.write_text(TINY_PERSONA)
    return path


def train_tiny_run(folder: Path, steps: int) -> Path:
    """Data from the tiny persona, and guppy-tiny trained on it for `steps` steps, in
    `folder`; returns the run folder."""
    (folder / "minnow.toml").write_text(TINY_PERSONA)
    assert main(["data", "--persona", str(folder / "minnow.toml"), "--n", "1200",
                 "--out", str(folder / "data")]) == 0
    assert main(["train", "--data", str(folder / "data"), "--run", str(folder / "tiny"),
                 "--preset", "guppy-tiny", "--steps", str(steps), "--batch-tokens", "1024",
                 "--lr", "1e-2", "--warmup", "5", "--eval-every", str(steps),
                 "--checkpoint-every", str(steps), "--device", "cpu", "--quiet"]) == 0
    return folder / "tiny"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `guppy ARGS` in-process; return (exit status, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


TINY_PERSONA_TEST = textwrap.dedent('''
    [[prompts]]
    text = "R U HUNGRY"
    topic = "food"
    style = "shouting"
    expect = ["eat", "food", "flakes", "pellets", "worm", "want"]

    [[prompts]]
    text = "hows ur water"
    topic = "water"
    style = "typos"
    expect = ["water"]

    [[prompts]]
    text = "?"
    topic = "hello"
    style = "minimal"
    expect = ["hello", "hi"]

    [[conversations]]
    name = "food then water"
    turns = [
      { text = "u hungry?", topic = "food", expect = ["eat", "want", "flakes"] },
      { text = "why", topic = "food", expect = ["food", "good"] },
      { text = "and the water?", topic = "water", expect = ["water"] },
    ]
''')


@pytest.fixture
def tiny_persona_with_test(tiny_persona: Path) -> Path:
    tiny_persona.with_name("minnow.test.toml").write_text(TINY_PERSONA_TEST)
    return tiny_persona
