import json

import pytest

from guppylm import data, persona
from guppylm.chat_format import normalize_user_text, turns
from guppylm.errors import GuppyError

from conftest import run_cli


def test_same_seed_gives_identical_bytes(tiny_persona, tmp_path, capsys):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        code, _, _ = run_cli(capsys, "data", "--persona", tiny_persona, "--n", 300,
                             "--seed", seed, "--out", tmp_path / name)
        assert code == 0
    for split in data.SPLITS:
        a = (tmp_path / "a" / f"{split}.jsonl").read_bytes()
        assert a == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
        assert a != (tmp_path / "c" / f"{split}.jsonl").read_bytes()


def test_phrasings_are_held_out_per_topic(tiny_persona):
    p = persona.load(str(tiny_persona))
    for topic in p.topics:
        s = data.split_phrasings(topic.prompts, topic.name, seed=0)
        assert all(s[split] for split in data.SPLITS)
        ids = {split: {id(t) for t in s[split]} for split in data.SPLITS}
        assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"]
        assert not ids["val"] & ids["test"]


def test_held_out_shares_of_phrasings():
    prompts = [(f"phrasing {i}",) for i in range(100)]
    s = data.split_phrasings(prompts, "topic", seed=0, val=0.04, test=0.06)
    assert [len(s[split]) for split in ("train", "val", "test")] == [90, 4, 6]
    assert sorted(s["train"] + s["val"] + s["test"]) == sorted(prompts)
    few = data.split_phrasings(prompts[:3], "topic", seed=0, val=0.04, test=0.06)
    assert [len(few[split]) for split in ("train", "val", "test")] == [1, 1, 1]


def test_held_out_shares_that_leave_nothing_are_refused(tiny_persona):
    p = persona.load(str(tiny_persona))
    for val, test in ((0.0, 0.06), (0.5, 0.5), (0.04, -0.1)):
        with pytest.raises(GuppyError, match="val_phrasings"):
            data.compose(p, data.DataConfig(n=50, val_phrasings=val, test_phrasings=test))


def test_test_prompts_come_only_from_held_out_phrasings(tiny_persona):
    """With no styling, every first prompt is a plain expansion of its split's templates."""
    p = persona.load(str(tiny_persona))
    plain = data.DataConfig(n=400, seed=3, name_rate=0, opener_rate=0, bare_rate=0,
                            double_rate=0, typo_rate=0,
                            about_rate=0)
    splits = data.compose(p, plain)
    composer = data.Composer(p, plain)
    for split in ("val", "test"):
        for conv in splits[split]:
            topic = next(t for t in p.topics if t.name == conv["topic"])
            held_out = {data.template.tidy(e) for e in _all_expansions(composer, topic, split)}
            train = {data.template.tidy(e) for e in _all_expansions(composer, topic, "train")}
            first = turns(conv)[0][0]
            assert first in held_out and first not in train


def test_subjects_fill_the_about_frames_and_are_held_out(tiny_persona):
    """A topic's subjects are split like its phrasings: val/test ask about unseen subjects."""
    p = persona.load(str(tiny_persona))
    unstyled = data.DataConfig(seed=0, name_rate=0, opener_rate=0, bare_rate=0, double_rate=0,
                               typo_rate=0, preamble_rate=0,
                               emoji_rate=0, about_rate=1.0)
    composer = data.Composer(p, unstyled)
    food = next(t for t in p.topics if t.name == "food")
    words = {split: {data.template.tidy(e) for e in _all_expansions_of(
        composer, composer.subjects["food"][split])} for split in data.SPLITS}
    assert all(words.values()) and not words["train"] & words["test"]
    prompts = {composer.prompt(food, "test").strip("?") for _ in range(200)}
    prompts = {q.removeprefix("what about ") for q in prompts}
    assert prompts <= words["test"] and prompts  # only held-out subjects, in the frames
    water = next(t for t in p.topics if t.name == "water")  # no subjects: its own phrasings
    assert all("about" not in composer.prompt(water, "train") for _ in range(50))


def _all_expansions_of(composer, templates, n=200):
    return {composer.expand(templates) for _ in range(n)}


def _all_expansions(composer, topic, split, n=200):
    return {composer.expand(composer.phrasings[topic.name][split]) for _ in range(n)}


def test_no_test_pair_or_first_prompt_occurs_in_train(tiny_persona):
    splits = data.compose(persona.load(str(tiny_persona)), data.DataConfig(n=1000))
    train_pairs = {p for c in splits["train"] for p in turns(c)}
    train_prompts = {u for u, _ in train_pairs}
    for split in ("val", "test"):
        assert len(splits[split]) == 50
        for conv in splits[split]:
            assert not any(pair in train_pairs for pair in turns(conv))
            assert turns(conv)[0][0] not in train_prompts


def test_multi_turn_share_and_chat_format(tiny_persona):
    splits = data.compose(persona.load(str(tiny_persona)), data.DataConfig(n=2000))
    convs = splits["train"]
    lengths = [len(c["messages"]) // 2 for c in convs]
    assert 0.15 < sum(n > 1 for n in lengths) / len(convs) < 0.25
    assert max(lengths) == 4
    for conv in convs:
        roles = [m["role"] for m in conv["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        assert all(normalize_user_text(m["content"]) == m["content"] for m in conv["messages"])


@pytest.mark.parametrize("name", ["guppy", "fern"])
def test_diversity_at_60k(name):
    splits = data.compose(persona.load(name), data.DataConfig(n=60_000))
    pairs = [p for split in splits.values() for c in split for p in turns(c)]
    assert len({u for u, _ in pairs}) >= 10_000
    assert len({r for _, r in pairs}) >= 20_000
    assert len({c["topic"] for c in splits["train"]}) == len(persona.load(name).topics)


def test_punctuation_only_prompts_are_never_emptied(tiny_persona):
    text = tiny_persona.read_text()
    text = text.replace('prompts = ["hi", "hello[ there]"', 'prompts = ["...", "?"')
    tiny_persona.write_text(text)
    splits = data.compose(persona.load(str(tiny_persona)), data.DataConfig(n=2000))
    prompts = [u for s in splits.values() for c in s for u, _ in turns(c)]
    assert all(prompts) and {"...", "?"} & set(prompts)


def test_prompts_vary_in_style():
    splits = data.compose(persona.load("guppy"), data.DataConfig(n=5000))
    prompts = [turns(c)[0][0] for c in splits["train"]]
    assert all(p == p.lower() for p in prompts)  # case is folded, for the model's sake
    assert any(p.endswith(("??", "!!")) for p in prompts)
    assert any(p.lower().startswith("guppy") for p in prompts)


def test_stats_command(tiny_persona, tmp_path, capsys):
    run_cli(capsys, "data", "--persona", tiny_persona, "--n", 400, "--out", tmp_path)
    code, out, _ = run_cli(capsys, "data", "stats", tmp_path)
    assert code == 0
    for words in ("distinct_prompts", "multi_turn_share", "pairs_in_train", "food"):
        assert words in out
    s = data.stats(tmp_path)
    assert s["splits"]["test"]["pairs_in_train"] == 0.0
    assert s["splits"]["train"]["conversations"] == 360
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["persona"] == "Minnow" and (tmp_path / "persona.toml").is_file()


def test_stats_of_a_folder_without_data(tmp_path, capsys):
    code, _, err = run_cli(capsys, "data", "stats", tmp_path)
    assert code == 2 and "train.jsonl: missing" in err and "guppy data" in err


def test_stats_of_a_corrupt_file(tiny_persona, tmp_path, capsys):
    run_cli(capsys, "data", "--persona", tiny_persona, "--n", 100, "--out", tmp_path)
    with open(tmp_path / "val.jsonl", "a") as f:
        f.write("{not json\n")
    code, _, err = run_cli(capsys, "data", "stats", tmp_path)
    assert code == 2 and "val.jsonl:6: not a conversation" in err


def test_bad_persona_leaves_existing_data_untouched(tiny_persona, tmp_path, capsys):
    run_cli(capsys, "data", "--persona", tiny_persona, "--n", 100, "--out", tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    bad = tmp_path.parent / "bad.toml"
    bad.write_text("name = ")
    code, _, _ = run_cli(capsys, "data", "--persona", bad, "--n", 100, "--out", tmp_path)
    assert code == 2
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_bad_numbers_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(capsys, "data", "--n", "0")
    assert e.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_persona_check_prints_summary_and_samples(tiny_persona, capsys):
    code, out, _ = run_cli(capsys, "persona", "check", tiny_persona)
    assert code == 0
    assert "3 topics" in out and "minnow:" in out and "you:" in out


def test_python_dash_m_entry_point(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "guppylm", "persona", "check", "guppy"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout
