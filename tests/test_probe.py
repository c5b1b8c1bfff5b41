"""`guppy inspect` (probe.py, probe_plots.py): what it measures is what the model computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from guppylm.chat import Guppy
from guppylm.checkpoint import load_run
from guppylm.probe import (
    LENS_TOP,
    ProbeConfig,
    attention_weights,
    heads,
    inspect_prompt,
    trace,
)

from conftest import run_cli, train_tiny_run

PROMPT = "are you hungry?"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("probe"), steps=40)


@pytest.fixture(scope="module")
def loaded(run_dir):
    model, tok, _ = load_run(run_dir)
    return model, tok


def test_top_candidates_are_the_softmax_of_the_models_logits(loaded):
    model, tok = loaded
    seen = inspect_prompt(model, tok, ProbeConfig(prompt=PROMPT, top=7))
    ids = [t.id for t in seen.tokens]
    with torch.inference_mode():
        logits = model(torch.tensor([ids]))[0]
    assert seen.steps and len(ids) == seen.n_prompt + len(seen.steps)
    for k, step in enumerate(seen.steps):
        probs = torch.softmax(logits[seen.n_prompt - 1 + k], dim=-1)
        expected, expected_ids = probs.topk(7)
        assert [c.token.id for c in step.top] == expected_ids.tolist()
        assert torch.allclose(torch.tensor([c.prob for c in step.top]), expected, atol=1e-6)
        assert step.chosen.token.id == ids[seen.n_prompt + k]
        assert step.chosen.prob == pytest.approx(float(probs[step.chosen.token.id]), abs=1e-6)
    # greedy: every token is the likeliest (the topic among topics), as chat replies
    assert all(s.chosen.token.id == s.top[0].token.id for s in seen.steps[1:])
    assert seen.reply == Guppy(model, tok).respond([{"role": "user", "content": PROMPT}],
                                                   temperature=0).text


def test_a_seed_samples_the_reply_chat_gives(loaded):
    model, tok = loaded
    for seed in range(3):
        seen = inspect_prompt(model, tok, ProbeConfig(prompt=PROMPT, seed=seed))
        said = Guppy(model, tok).respond([{"role": "user", "content": PROMPT}], seed=seed)
        assert not seen.greedy and seen.reply == said.text and seen.chosen_topic == said.topic


def test_topic_probabilities_sum_to_one_over_the_personas_topics(loaded):
    model, tok = loaded
    seen = inspect_prompt(model, tok, ProbeConfig(prompt=PROMPT))
    names = [name for name, _ in seen.topic.ranked]
    probs = [p for _, p in seen.topic.ranked]
    assert sorted(names) == sorted(tok.topics.values()) == ["food", "hello", "water"]
    assert sum(probs) == pytest.approx(1.0, abs=1e-6)
    assert probs == sorted(probs, reverse=True)
    assert names[0] == seen.chosen_topic  # greedy: the likeliest topic is the one named
    # the topic tokens' share of all tokens, and each topic's: restricted x share = full
    first = seen.steps[0]
    assert 0 < seen.topic.mass <= 1
    assert first.chosen.prob == pytest.approx(probs[0] * seen.topic.mass, rel=1e-5)


def test_recomputed_attention_reproduces_the_blocks_output(loaded):
    model, tok = loaded
    ids = inspect_prompt(model, tok, ProbeConfig(prompt="how is the water?")).tokens
    seen = trace(model, [t.id for t in ids])
    T, C = seen.attn_in[0].shape
    for block, x, out in zip(model.h, seen.attn_in, seen.attn_out, strict=True):
        weights = attention_weights(block.attn, x)
        assert weights.shape == (model.cfg.n_head, T, T)
        assert torch.allclose(weights.sum(-1), torch.ones(model.cfg.n_head, T), atol=1e-6)
        assert (weights.triu(1) == 0).all()  # nothing attends to the future
        with torch.inference_mode():
            _, _, v = heads(block.attn, x)
            mine = block.attn.c_proj((weights @ v).transpose(0, 1).reshape(T, C))
        assert torch.allclose(mine, out, atol=1e-5)
        # and they are not just anything that sums to one: uniform weights do not
        with torch.inference_mode():
            uniform = torch.ones_like(weights).tril() / torch.arange(1, T + 1)[:, None]
            other = block.attn.c_proj((uniform @ v).transpose(0, 1).reshape(T, C))
        assert not torch.allclose(other, out, atol=1e-5)


def test_the_lens_gives_one_row_per_layer_ending_in_the_output(loaded):
    model, tok = loaded
    seen = inspect_prompt(model, tok, ProbeConfig(prompt=PROMPT, lens=True))
    assert len(seen.lens) == model.cfg.n_layer
    assert all(len(row) == LENS_TOP for row in seen.lens)
    output = seen.steps[0].top[:LENS_TOP]  # the model's prediction after the prompt
    assert [c.token.id for c in seen.lens[-1]] == [c.token.id for c in output]
    assert [c.prob for c in seen.lens[-1]] == pytest.approx([c.prob for c in output], abs=1e-6)
    assert inspect_prompt(model, tok, ProbeConfig(prompt=PROMPT)).lens == []


def test_guppy_inspect_prints_the_views_and_writes_the_pictures(run_dir, tmp_path, capsys):
    code, out, err = run_cli(capsys, "inspect", run_dir, "--prompt", PROMPT, "--top", "3",
                             "--lens", "--out", tmp_path / "look")
    assert code == 0, err
    for heading in ("prompt: ", "topic: ", "reply (greedy", "logit lens: "):
        assert f"\n{heading}" in "\n" + out
    assert "<|user|>" in out and "<|assistant|>" in out
    for name in ("attention.png", "tokens.png"):
        data = (tmp_path / "look" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
    code, _, err = run_cli(capsys, "inspect", run_dir, "--prompt", "hi", "--max-new-tokens", "3")
    assert code == 0 and (run_dir / "inspect" / "attention.png").is_file(), err


@pytest.mark.parametrize(("args", "says"), [
    (["{missing}", "--prompt", "hi"], "no such run folder"),
    (["{run}", "--prompt", "  "], "--prompt '  ': empty"),
    (["{run}", "--prompt", "hi", "--top", "0"], "--top 0: must be from 1 to 20"),
    (["{run}", "--prompt", "hi", "--top", "21"], "--top 21: must be from 1 to 20"),
    (["{run}", "--prompt", "hi", "--out", "{file}"], "a file, not a folder"),
])
def test_bad_input_gets_one_line_and_exit_2(run_dir, tmp_path, capsys, args, says):
    (tmp_path / "file").write_text("x")
    values = {"{missing}": tmp_path / "nope", "{run}": run_dir, "{file}": tmp_path / "file"}
    out_dir = tmp_path / "pictures"
    args = [str(values.get(a, a)) for a in args]
    if "--out" not in args:
        args += ["--out", str(out_dir)]
    code, out, err = run_cli(capsys, "inspect", *args)
    assert code == 2 and out == ""
    assert err.startswith("guppy: error: ") and err.count("\n") == 1 and says in err, err
    assert not out_dir.exists()  # nothing written
