"""The learning timeline: the same prompts asked during training, kept in metrics.jsonl,
shown in report.md and by `guppy run`, and unchanged by a resume."""

import json
import shutil
from pathlib import Path

import pytest

from guppylm import data, persona, timeline
from guppylm import train as train_mod
from guppylm.evaluate import evaluate_run
from guppylm.train import TrainConfig, train

from conftest import TINY_PERSONA, TINY_PERSONA_TEST


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    (folder / "minnow.toml").write_text(TINY_PERSONA)
    (folder / "minnow.test.toml").write_text(TINY_PERSONA_TEST)
    p = persona.load(str(folder / "minnow.toml"))
    cfg = data.DataConfig(n=1200, seed=0)
    data.write(data.compose(p, cfg), p, cfg, folder)
    return folder


def tiny(data_dir: Path, run: Path) -> TrainConfig:
    return TrainConfig(data=str(data_dir), run=str(run), preset="guppy-tiny", steps=40,
                       batch_tokens=1024, lr=1e-2, warmup=5, eval_every=5, eval_tokens=2048,
                       checkpoint_every=5,
                       device="cpu")


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runs") / "straight"
    train(tiny(data_dir, folder), quiet=True)
    return folder


def test_the_same_prompts_are_asked_at_doubling_validation_steps(run):
    rows = timeline.read(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [5, 10, 20, 40]  # 1, 2, 4, 8 x eval_every, and last
    prompts = json.loads((run / "config.json").read_text())["timeline_prompts"]
    assert len(prompts) == timeline.PROMPTS
    for row in rows:
        assert [a["prompt"] for a in row["answers"]] == prompts
        assert all(isinstance(a["reply"], str) for a in row["answers"])
        assert row["val_loss"] is not None  # asked at a validation, shown beside its loss
    assert any(a["reply"] for a in rows[-1]["answers"])


def test_prompts_cover_the_topics_and_need_none(data_dir):
    val = data.read_split(data_dir, "val")
    prompts = timeline.pick_prompts(val)
    assert prompts == timeline.pick_prompts(val) and len(set(prompts)) == timeline.PROMPTS
    topic_of = {timeline.first_user_turn(c): c["topic"] for c in val}
    assert len({topic_of[p] for p in prompts[:3]}) == 3  # the tiny persona's three topics
    free_form = [{"messages": [{"role": m["role"], "content": m["content"]}
                               for m in c["messages"]]} for c in val]
    assert len(set(timeline.pick_prompts(free_form))) == timeline.PROMPTS
    assert timeline.pick_prompts(val[:1]) == [timeline.first_user_turn(val[0])]


def test_is_due_at_doubling_multiples_and_the_last_step():
    due = [s for s in range(1, 2000) if timeline.is_due(s, 100, last=False)]
    assert due == [100, 200, 400, 800, 1600]
    assert timeline.is_due(1234, 100, last=True) and not timeline.is_due(300, 100, last=False)


def test_a_resumed_run_keeps_the_timeline_of_an_uninterrupted_one(data_dir, run, tmp_path,
                                                                  monkeypatch):
    moved = tmp_path / "data"
    shutil.copytree(data_dir, moved)
    resumed = tmp_path / "resumed"
    save = train_mod.save_checkpoint

    def crash_at_20(run_dir, model, opt, scaler, meta):
        if meta["step"] == 20:  # after step 20's validation and timeline were written
            raise KeyboardInterrupt
        save(run_dir, model, opt, scaler, meta)

    monkeypatch.setattr(train_mod, "save_checkpoint", crash_at_20)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(moved, resumed), quiet=True)
    assert [r["step"] for r in timeline.read(resumed / "metrics.jsonl")] == [5, 10, 20]
    monkeypatch.setattr(train_mod, "save_checkpoint", save)
    # the val split changes: a resumed run still asks the prompts it recorded
    val = (moved / "val.jsonl").read_text().splitlines()
    (moved / "val.jsonl").write_text("\n".join(reversed(val)) + "\n")
    assert timeline.pick_prompts(data.read_split(moved, "val")) != \
        json.loads((run / "config.json").read_text())["timeline_prompts"]
    train(TrainConfig(run=str(resumed), device="cpu"), resume=True, quiet=True)
    again = timeline.read(resumed / "metrics.jsonl")
    assert [r["step"] for r in again] == [5, 10, 20, 40]  # step 20 once: lines after 15 dropped
    assert [r["answers"] for r in again] == [r["answers"] for r in timeline.read(
        run / "metrics.jsonl")]


def test_report_shows_the_timeline_beside_the_loss(run):
    evaluate_run(run)
    report = (run / "report.md").read_text()
    section = report.split("## Learning timeline", 1)[1].split("\n## ", 1)[0]
    rows = timeline.read(run / "metrics.jsonl")
    for answer in rows[0]["answers"]:
        assert f"**you:** {answer['prompt']}" in section
    last = rows[-1]
    assert f"| {last['step']} | {last['val_loss']:.3f} | {timeline.shown(last['answers'][0])}" \
        in section
    assert section.count("| step | val loss | minnow |") == timeline.PROMPTS


def test_markdown_keeps_each_reply_in_its_cell():
    rows = [{"step": 1200, "val_loss": None,
             "answers": [{"prompt": "a|b", "topic": "food", "reply": "x | y\nz <|end|>"}]}]
    lines = timeline.markdown(rows, "minnow")
    assert "**you:** a\\|b" in lines
    assert "| 1,200 |  | [food] x \\| y z &lt;\\|end\\|> |" in lines
    assert timeline.lines(rows, "minnow") == ["  you: a|b",
                                              "    step  1,200  minnow: [food] x | y z <|end|>"]


def test_asking_leaves_the_model_in_training_mode(run):
    from guppylm.checkpoint import load_run

    model, tok, _ = load_run(run)
    model.train()
    answers = timeline.ask(model, tok, ["hi", "are you hungry?"])
    assert model.training and [a["prompt"] for a in answers] == ["hi", "are you hungry?"]
