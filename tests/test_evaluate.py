import json
import math
from pathlib import Path

import pytest
import torch

from guppylm import data, persona
from guppylm.chat import Guppy
from guppylm.chat_format import encode_chats
from guppylm.errors import GuppyError
from guppylm.evaluate import (
    STYLES,
    load_persona_test,
    persona_test_path,
    respond_together,
    split_loss,
)
from guppylm.scoring import Grammar, copy_rate, distinct_n, is_loop, judge
from guppylm.train import TrainConfig, train

from conftest import TINY_PERSONA_TEST, run_cli


@pytest.fixture
def minnow(tiny_persona):
    return persona.load(str(tiny_persona))


EXPECT = ["water", "warm"]


def test_a_good_reply_passes(minnow):
    verdict = judge("the water is warm. i like it.", True, EXPECT, minnow)
    assert verdict.passed and verdict.reasons == []


@pytest.mark.parametrize("reply, ended, reason", [
    ("The water is warm.", True, "capitals"),
    ("the water is warm " + "and nice " * 12, True, "too long"),
    ("the water is warm.<|user|> hi", True, "markup"),
    ("the water is warm. the water is warm.", True, "repetition"),
    ("warm water warm water warm water warm water", True, "repetition"),
    ("the water is warm and", False, "cut off"),
    ("i eat flakes.", True, "off topic"),
    ("", True, "empty"),
])
def test_a_reply_fails_for_each_reason(minnow, reply, ended, reason):
    verdict = judge(reply, ended, EXPECT, minnow)
    assert not verdict.passed and reason in verdict.reasons
    assert verdict.in_character == (reason == "off topic")


def test_expected_words_match_at_word_starts(minnow):
    assert judge("i am swimming in warmth.", True, ["warm"], minnow).on_topic
    assert not judge("i am swimming.", True, ["wim"], minnow).on_topic


def test_grammar_accepts_new_combinations_and_rejects_word_salad(minnow):
    grammar = Grammar(minnow)
    assert grammar.well_formed("i eat a tiny worm.")
    assert grammar.well_formed("a small worm is the best.")  # not in any single reply
    assert grammar.well_formed("hello.")
    assert not grammar.well_formed("the water warm water is the best.")
    assert not grammar.well_formed("i eat a tiny worm")  # cut before its full stop
    assert grammar.share_well_formed(["hello. the water is nice.", "water eat i."]) == 2 / 3


def test_every_template_sentence_is_well_formed():
    import random

    from guppylm import template
    for name in ("guppy", "fern"):
        p = persona.load(name)
        grammar, rng = Grammar(p), random.Random(0)
        replies = [template.expand(rng.choice(t.replies + t.more), p.pools, rng)
                   for t in p.topics for _ in range(20)]
        assert grammar.share_well_formed(replies) == 1.0


def test_variety_measures():
    assert distinct_n(["a b c", "a b d"], 1) == 4 / 6
    assert distinct_n(["a b c", "a b d"], 2) == 3 / 4
    assert copy_rate(["x", "y", "z", "x"], {"x"}) == 0.5
    assert is_loop("blub blub blub blub blub")
    assert not is_loop("blub blub. i am a fish.")


def test_bits_per_byte_of_a_uniform_model(tiny_persona, tmp_path):
    from guppylm.chat_format import chat_texts, topics_of
    from guppylm.model import GPT, PRESETS, GPTConfig
    from guppylm.tokenizer import train_tokenizer

    convs = data.compose(persona.load(str(tiny_persona)), data.DataConfig(n=200))["train"]
    tok = train_tokenizer(chat_texts(convs), topics=topics_of(convs))
    model = GPT(GPTConfig(**{**vars(PRESETS["guppy-tiny"]), "vocab_size": tok.vocab_size}))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # every logit 0: a uniform distribution over the vocabulary
    loss, bpb = split_loss(Guppy(model, tok), convs[:40])
    tokens = sum(sum(m > 0 for m in mask[1:]) for _, mask in encode_chats(tok, convs[:40]))
    # what the assistant writes: the topic token and the end-of-turn marker (one byte each)
    # around the reply's UTF-8 bytes
    n_bytes = sum(len(m["content"].encode()) + 2 for c in convs[:40]
                  for m in c["messages"] if m["role"] == "assistant")
    assert loss == pytest.approx(math.log(tok.vocab_size), rel=1e-5)
    assert bpb == pytest.approx(tokens * math.log2(tok.vocab_size) / n_bytes, rel=1e-5)


@pytest.mark.parametrize("name, least", [("guppy", 150), ("fern", 50), ("dusty", 100)])
def test_shipped_persona_tests_are_complete(name, least):
    p = persona.load(name)
    test = load_persona_test(persona_test_path(Path(p.path)), p)
    assert len(test.prompts) >= least
    assert {t.style for t in test.prompts} == set(STYLES)
    assert test.conversations and all(3 <= len(steps) <= 5 for _, steps in test.conversations)


@pytest.mark.parametrize("old, new, says", [
    ('topic = "water"', 'topic = "lava"', "prompts[1]: unknown topic 'lava'"),
    ('style = "typos"', 'style = "rude"', "prompts[1]: unknown style 'rude'"),
    ('expect = ["water"]', "expect = []", "prompts[1]: expect must list"),
    ('text = "?"', 'text = ""', "prompts[2]: missing text"),
])
def test_bad_persona_test_file(minnow, tmp_path, old, new, says):
    path = tmp_path / "x.test.toml"
    path.write_text(TINY_PERSONA_TEST.replace(old, new, 1))
    with pytest.raises(GuppyError, match=says.replace("[", r"\[").replace("]", r"\]")):
        load_persona_test(path, minnow)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from conftest import TINY_PERSONA

    root = tmp_path_factory.mktemp("eval")
    (root / "minnow.toml").write_text(TINY_PERSONA)
    (root / "minnow.test.toml").write_text(TINY_PERSONA_TEST)
    p = persona.load(str(root / "minnow.toml"))
    cfg = data.DataConfig(n=800)
    data.write(data.compose(p, cfg), p, cfg, root / "data")
    for name, steps in (("a", 5), ("b", 60)):
        train(TrainConfig(data=str(root / "data"), run=str(root / name), preset="guppy-tiny",
                          steps=steps, batch_tokens=1024, lr=1e-2, warmup=5, eval_every=30,
                          device="cpu"), quiet=True)
    return root


def test_report_for_a_tiny_model(two_runs, capsys):
    code, out, err = run_cli(capsys, "eval", two_runs / "b")
    assert code == 0, err
    run = two_runs / "b"
    for name in ("report.md", "eval.json", "persona_topics.png", "persona_styles.png"):
        assert (run / name).is_file(), name
    report = (run / "report.md").read_text()
    assert "persona test pass" in report and "Examples that failed" in report
    metrics = json.loads((run / "eval.json").read_text())
    assert metrics["samples"] == 3 * 3 and len(metrics["multi_turn"]) == 3 * 3
    assert 0 <= metrics["persona_pass"] <= 1 and metrics["test_bpb"] > 0
    assert set(metrics["per_turn"]) == {"1", "2", "3"}


def test_two_runs_side_by_side(two_runs, capsys):
    code, out, _ = run_cli(capsys, "eval", two_runs / "a", two_runs / "b")
    assert code == 0
    lines = out.splitlines()
    header = lines[next(i for i, line in enumerate(lines) if line.startswith("preset")) - 1]
    assert header.split() == ["a", "b"]
    a = json.loads((two_runs / "a" / "eval.json").read_text())
    b = json.loads((two_runs / "b" / "eval.json").read_text())
    assert b["test_loss"] < a["test_loss"]  # more training, lower held-out loss


def test_replies_decoded_together_are_the_replies_decoded_alone(two_runs):
    """eval decodes its prompts in batches: the replies must be Guppy.respond's, bit for bit,
    for single turns and for histories sent back as content only (restored topics, the
    opening rule), at several seeds, with batches smaller than the number of requests."""
    guppy = Guppy.load(two_runs / "b")
    first = [{"role": "user", "content": text} for text in ("hi", "R U HUNGRY", "hows ur water")]
    history = [first[0], {"role": "assistant", "content": guppy.reply("hi", seed=3)},
               {"role": "user", "content": "and food?"}]
    requests = [([m], seed) for m in first for seed in (0, 1, 2)] + [(history, 4), (history, 5)]
    together = respond_together(guppy, requests, max_batch=4)
    alone = [guppy.respond(messages, seed=seed) for messages, seed in requests]
    assert together == alone
    assert len({r.text for r in alone}) > 1  # the seeds did differ: a real comparison


def test_eval_of_a_folder_that_is_no_run(tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", tmp_path)
    assert code == 2 and "config.json: missing" in err


def test_chance_level_of_the_on_topic_score(minnow):
    from guppylm.evaluate import PersonaTest, TestPrompt, chance_on_topic

    unique = PersonaTest([TestPrompt("u hungry?", "food", "plain", ["eat", "want"])])
    shared = PersonaTest([TestPrompt("u hungry?", "food", "plain", ["the", "water"])])
    assert chance_on_topic(unique, minnow) == 0.0  # only food replies say eat / want
    assert chance_on_topic(shared, minnow) > 0.5  # water and hello replies say these too


def test_eval_without_a_persona_test_says_how_to_add_one(two_runs, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(two_runs / "b", run)
    (run / "persona.test.toml").unlink()
    code, _, err = run_cli(capsys, "eval", run, "--data", two_runs / "data")
    assert code == 2 and "persona.test.toml: missing" in err and err.count("\n") == 1


def test_eval_works_from_anywhere_even_when_the_data_folder_is_gone(
        tmp_path, monkeypatch, capsys, tiny_persona_with_test):
    monkeypatch.chdir(tmp_path)
    p = persona.load(str(tiny_persona_with_test))
    cfg = data.DataConfig(n=300, seed=3)
    data.write(data.compose(p, cfg), p, cfg, Path("data"))
    train(TrainConfig(data="data", run="runs/x", preset="guppy-tiny", steps=5,
                      batch_tokens=1024, device="cpu"), quiet=True)
    run = (tmp_path / "runs" / "x").resolve()

    def val_loss(where):
        monkeypatch.chdir(where)
        code, out, err = run_cli(capsys, "eval", run)
        assert code == 0, err
        return json.loads((run / "eval.json").read_text())["val_loss"], out

    here, out = val_loss(tmp_path)  # the data folder, as trained
    assert "composing" not in out
    (tmp_path / "elsewhere").mkdir()
    there, out = val_loss(tmp_path / "elsewhere")  # config.json records the folder absolute
    assert there == here and "composing" not in out
    (tmp_path / "data").rename(tmp_path / "moved")
    remade, out = val_loss(tmp_path / "elsewhere")
    gone = (tmp_path / "data").resolve()
    assert f"{gone} no longer holds the data this run was trained on; composing it again" in out
    assert remade == pytest.approx(here, rel=1e-9)  # the same conversations, composed again


def test_the_table_sets_runs_side_by_side_with_their_styles():
    from guppylm.evaluate import HEADLINE, format_table

    def result(run: str, per_style: dict) -> dict:
        figures = {key: 0.5 for _, key, _ in HEADLINE if key}
        return {**figures, "run": run, "preset": "guppy-1m", "distinct_1": 0.1,
                "distinct_2": 0.3, "per_style": per_style}

    table = format_table([result("runs/fern", {"plain": 0.8, "slang": 0.25}),
                          result("runs/dusty", {"plain": 0.5, "emoji": 1.0})])
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:]}
    assert table.splitlines()[0].split() == ["fern", "dusty"]
    assert rows["plain"] == ["80%", "50%"]
    assert rows["slang"] == ["25%", "-"] and rows["emoji"] == ["-", "100%"]
    assert "persona test by style" in table
