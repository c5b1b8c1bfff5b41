import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from guppylm import data, persona
from guppylm.batching import make_batches
from guppylm.chat import Guppy
from guppylm.train import TrainConfig, train

from conftest import run_cli


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from conftest import TINY_PERSONA

    folder = tmp_path_factory.mktemp("data")
    (folder / "minnow.toml").write_text(TINY_PERSONA)
    p = persona.load(str(folder / "minnow.toml"))
    cfg = data.DataConfig(n=1200, seed=0)
    data.write(data.compose(p, cfg), p, cfg, folder)
    return folder


def tiny(data_dir: Path, run: Path, **overrides) -> TrainConfig:
    base = dict(data=str(data_dir), run=str(run), preset="guppy-tiny", steps=40, batch_tokens=1024,
                lr=1e-2, warmup=5, eval_every=20, checkpoint_every=10, device="cpu")
    return TrainConfig(**{**base, **overrides})


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_the_loss_and_fills_the_run_folder(data_dir, tmp_path):
    train(tiny(data_dir, tmp_path / "run"), quiet=True)
    run = tmp_path / "run"
    for name in ("config.json", "tokenizer.json", "model.safetensors", "metrics.jsonl",
                 "loss.png", "persona.toml", "checkpoint.safetensors"):
        assert (run / name).is_file(), name
    val = [m["val_loss"] for m in metrics(run) if "val_loss" in m]
    train_losses = [m["loss"] for m in metrics(run) if "loss" in m]
    assert len(val) == 2 and val[-1] < val[0]
    assert sum(train_losses[-5:]) < sum(train_losses[:5]) - 5 * 1.0


def test_batches_waste_little_on_padding(data_dir):
    from guppylm.batching import encode_examples
    from guppylm.chat_format import chat_texts, topics_of
    from guppylm.tokenizer import train_tokenizer

    convs = data.read_split(data_dir, "train")
    examples = encode_examples(train_tokenizer(chat_texts(convs), topics=topics_of(convs)),
                               convs, 128)
    batches = make_batches(examples, 1024, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(len(examples)))
    computed = sum(len(b) * max(len(examples[i][0]) for i in b) for b in batches)
    real = sum(len(e[0]) for e in examples)
    assert (computed - real) / computed < 0.10


def test_topic_weights_come_from_the_template_mask(data_dir):
    from guppylm.batching import collate, encode_examples
    from guppylm.chat_format import chat_texts, topics_of
    from guppylm.model import IGNORE
    from guppylm.tokenizer import train_tokenizer

    train_convs = data.read_split(data_dir, "train")
    convs = [c for c in train_convs if len(c["messages"]) >= 4][:8]
    tok = train_tokenizer(chat_texts(train_convs), topics=topics_of(train_convs))
    examples = encode_examples(tok, convs, 128)
    x, y, w = collate(examples, list(range(len(convs))), tok.end_id, topic_weight=5.0)
    assert set(w.unique().tolist()) == {1.0, 5.0}
    for row, conv in enumerate(convs):
        # the weighted targets are exactly each assistant turn's topic token, in order
        heavy = [int(t) for t, wt in zip(y[row], w[row], strict=True) if wt == 5.0]
        assert IGNORE not in heavy
        assert [tok.topics[t] for t in heavy] == [m["topic"] for m in conv["messages"]
                                                  if m["role"] == "assistant"]
    _, _, plain = collate(examples, list(range(len(convs))), tok.end_id)
    assert torch.equal(plain, torch.ones_like(plain))


def test_weighted_loss_is_the_plain_mean_at_weight_1_and_leans_on_heavy_tokens():
    from guppylm.model import GPT, PRESETS

    torch.manual_seed(0)
    model = GPT(PRESETS["guppy-tiny"])
    x = torch.randint(0, 100, (2, 12))
    y = torch.randint(0, 100, (2, 12))
    y[:, :3] = -100
    plain = model(x, y)
    assert torch.allclose(model(x, y, weights=torch.ones(2, 12)), plain)
    heavy = torch.ones(2, 12)
    heavy[:, 5] = 1000.0
    per_token = torch.nn.functional.cross_entropy(model(x)[:, 5].reshape(-1, model.cfg.vocab_size),
                                                  y[:, 5].reshape(-1))
    assert abs(model(x, y, weights=heavy).item() - per_token.item()) < 0.05


def test_save_then_load_gives_identical_outputs(data_dir, tmp_path):
    model = train(tiny(data_dir, tmp_path / "run", steps=10), quiet=True)
    loaded = Guppy.load(tmp_path / "run")
    idx = torch.randint(0, model.cfg.vocab_size, (2, 17))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(idx), loaded.model(idx))
    assert loaded.model.lm_head.weight is loaded.model.wte.weight


def test_kill_9_then_resume_equals_an_uninterrupted_run(data_dir, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(tiny(data_dir, straight, steps=120, checkpoint_every=5), quiet=True)
    args = [sys.executable, "-m", "guppylm", "train", "--data", str(data_dir), "--run", str(killed),
            "--preset", "guppy-tiny", "--steps", "120", "--batch-tokens", "1024", "--lr", "1e-2",
            "--warmup", "5", "--eval-every", "20", "--checkpoint-every", "5", "--device", "cpu",
            "--quiet"]
    proc = subprocess.Popen(args)
    ckpt = killed / "checkpoint.safetensors"
    deadline = time.time() + 60
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    from safetensors import safe_open
    with safe_open(str(ckpt), "pt") as f:
        assert int(f.metadata()["step"]) < 120, "the run ended before it could be killed"
    assert not (killed / "model.safetensors").exists()
    config = (killed / "config.json").read_text()
    assert subprocess.run(args + ["--resume"]).returncode == 0
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [m["step"] for m in metrics(killed) if "loss" in m]
    assert steps == list(range(1, 121))  # no step lost or repeated in the log
    assert (killed / "config.json").read_text() == config  # resuming changed no config


def test_config_json_holds_configuration_not_actions(data_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny(data_dir, run, steps=3), overwrite=True, quiet=True)
    config = json.loads((run / "config.json").read_text())
    for action in ("resume", "overwrite", "quiet"):
        assert action not in config and action not in config["train"]
    # what `guppy eval` needs to find or remake the data from anywhere
    assert Path(config["train"]["data"]) == data_dir.resolve()
    assert config["data"] == json.loads((data_dir / "meta.json").read_text())["config"]


def test_fp16_trains_with_a_grad_scaler_and_lowers_the_loss(data_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny(data_dir, run, dtype="fp16", steps=20, eval_every=10), quiet=True)
    from safetensors import safe_open
    with safe_open(str(run / "checkpoint.safetensors"), "pt") as f:
        scaler = json.loads(f.metadata()["scaler"])
    assert scaler["scale"] > 0  # the scaler ran: its state is empty in fp32 and bf16
    val = [m["val_loss"] for m in metrics(run) if "val_loss" in m]
    assert len(val) == 2 and val[-1] < val[0]


def test_a_config_error_names_the_field_or_the_flag(data_dir, tmp_path, capsys):
    from guppylm.errors import ConfigError

    with pytest.raises(ConfigError, match="TrainConfig.preset 'guppy-huge': unknown; choose"):
        train(tiny(data_dir, tmp_path / "run", preset="guppy-huge"), quiet=True)
    code, _, err = run_cli(capsys, "train", "--data", data_dir, "--run", tmp_path / "run",
                           "--preset", "guppy-huge")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("guppy: error: --preset 'guppy-huge': unknown; choose one of guppy-9m")
    assert not (tmp_path / "run").exists()


def _ddp_worker(rank: int, world: int, cfg: TrainConfig, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    model = train(cfg, quiet=True)
    from safetensors.torch import save_file
    weights = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(weights, str(Path(cfg.run).parent / f"rank{rank}.safetensors"))


def test_two_process_ddp_on_cpu_ends_with_identical_weights(data_dir, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tiny(data_dir, tmp_path / "run", steps=12, eval_every=6)
    mp.spawn(_ddp_worker, args=(2, cfg, port), nprocs=2, join=True)
    a = load_file(str(tmp_path / "rank0.safetensors"))
    b = load_file(str(tmp_path / "rank1.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_cli_end_to_end_on_a_tiny_config(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", data_dir, "--run", run, "--preset",
                           "guppy-tiny", "--steps", 15, "--batch-tokens", 1024, "--quiet")
    assert code == 0, err
    code, out, _ = run_cli(capsys, "chat", "--model", run, "--prompt", "are you hungry?",
                           "--seed", 1, "--max-new-tokens", 10, "--show-topic")
    assert code == 0 and out.startswith("[")  # a topic, then the (maybe empty) reply


def test_guppy_run_on_a_tiny_config(tmp_path, capsys, tiny_persona_with_test):
    code, out, err = run_cli(capsys, "run", "--persona", tiny_persona_with_test, "--n", 600,
                             "--data", tmp_path / "data", "--run", tmp_path / "run", "--preset",
                             "guppy-tiny", "--steps", 10, "--quiet")
    assert code == 0, err
    assert "[3/4]" in out and "you:" in out and "minnow:" in out
    assert "how it learned to talk" in out and "    step     10  minnow: " in out  # the timeline
    assert "[4/4]" in out and "persona test pass" in out
    run = tmp_path / "run"
    assert (run / "report.md").is_file() and (run / "persona.test.toml").is_file()


def test_interactive_chat_keeps_history_resets_and_exits_cleanly(data_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny(data_dir, run, steps=5), quiet=True)
    session = "hi\n\n   \n/reset\nare you hungry? 🐟\n"
    r = subprocess.run([sys.executable, "-m", "guppylm", "chat", "--model", str(run),
                        "--seed", "0", "--max-new-tokens", "8"], input=session,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("you> ") == 6  # five inputs, then end-of-file
    assert r.stdout.count("minnow> ") == 2  # blank lines get no reply
    assert "(forgotten)" in r.stdout and "Traceback" not in r.stderr


def test_history_is_trimmed_and_an_overlong_message_cut_to_fit(data_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny(data_dir, run, steps=3), quiet=True)
    g = Guppy.load(run)
    history = []
    for i in range(40):
        history += [{"role": "user", "content": f"are you hungry {i}?"},
                    {"role": "assistant", "content": "i eat flakes. flakes is the best."}]
    history.append({"role": "user", "content": "last question?"})
    ids = g.prompt_ids(history, max_new_tokens=40)
    assert len(ids) <= g.model.cfg.context - 40
    assert g.tok.decode(ids).endswith("last question?")  # the newest turn is kept
    huge = [{"role": "user", "content": "water " * 2000}]
    assert len(g.prompt_ids(huge, 40)) <= g.model.cfg.context - 40
    assert isinstance(g.reply("water " * 2000, max_new_tokens=5), str)


def test_python_api_import():
    from guppylm import Guppy as FromPackage
    assert FromPackage is Guppy


@pytest.mark.parametrize("args, says", [
    (["train", "--data", "nowhere"], "nowhere/train.jsonl: missing"),
    (["train", "--resume", "--run", "nowhere"], "nowhere/config.json: missing"),
    (["train", "--device", "cuda"], "no CUDA GPU"),
    (["chat", "--model", "nowhere"], "nowhere: no such run folder"),
])
def test_bad_input_gives_one_line(args, says, capsys, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if args[:2] == ["train", "--device"]:
        args = args + ["--data", str(data_dir)]
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and says in err and err.count("\n") == 1
    assert not Path("runs").exists()  # nothing written


@pytest.mark.parametrize("value, says", [("0", "must be a number above 0, got 0"),
                                         ("nan", "must be a number above 0, got nan"),
                                         ("heavy", "'heavy' is not a number")])
def test_bad_topic_weight(value, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        run_cli(capsys, "train", "--topic-weight", value)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"--topic-weight: {says}" in err
    assert not Path("runs").exists()


def test_existing_run_is_never_overwritten_by_accident(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny(data_dir, run, steps=3), quiet=True)
    before = (run / "model.safetensors").read_bytes()
    code, _, err = run_cli(capsys, "train", "--data", data_dir, "--run", run, "--quiet")
    assert code == 2 and "already holds a run" in err
    assert (run / "model.safetensors").read_bytes() == before


def test_incomplete_run_folder_says_how_to_finish_it(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny(data_dir, run, steps=3), quiet=True)
    (run / "model.safetensors").unlink()
    code, _, err = run_cli(capsys, "chat", "--model", run, "--prompt", "hi")
    assert code == 2 and "model.safetensors missing" in err and "--resume" in err


@pytest.mark.parametrize("flag, value, says", [
    ("--temperature", "-1", "--temperature -1.0: must be 0 or more"),
    ("--top-p", "0", "--top-p 0.0: must be above 0"),
    ("--top-k", "-3", "--top-k -3: must be 0"),
    ("--topic-temperature", "-0.5", "--topic-temperature -0.5: must be 0 or more"),
])
def test_bad_sampling_options(data_dir, tmp_path, capsys, flag, value, says):
    run = tmp_path / "run"
    train(tiny(data_dir, run, steps=2), quiet=True)
    code, _, err = run_cli(capsys, "chat", "--model", run, "--prompt", "hi", flag, value)
    assert code == 2 and says in err


def test_corrupt_or_mismatched_weights(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny(data_dir, run, steps=2), quiet=True)
    (run / "model.safetensors").write_bytes(b"not safetensors at all")
    code, _, err = run_cli(capsys, "chat", "--model", run, "--prompt", "hi")
    assert code == 2 and "unreadable weights" in err and err.count("\n") == 1
    from safetensors.torch import save_file
    save_file({"wte.weight": torch.zeros(3, 3)}, str(run / "model.safetensors"))
    code, _, err = run_cli(capsys, "chat", "--model", run, "--prompt", "hi")
    assert code == 2 and "do not match config.json" in err


def test_a_time_budget_ends_on_time_with_the_schedule_run_out(data_dir, tmp_path):
    run = tmp_path / "run"
    start = time.perf_counter()
    train(tiny(data_dir, run, minutes=0.1, warmup=3, eval_every=1000), quiet=True)
    took = time.perf_counter() - start
    rows = [m for m in metrics(run) if "loss" in m]
    assert 0.1 * 60 * 0.9 < rows[-1]["elapsed_s"] <= 0.1 * 60 + 2 and took < 30
    assert len(rows) > 3  # past warmup (a loaded machine may take only a few steps)
    assert rows[-1]["lr"] < 0.25 * 1e-2  # the cosine followed the clock down to its floor


def test_torchrun_two_processes_end_to_end(data_dir, tmp_path):
    run = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run"]  # what `torchrun` runs
    r = subprocess.run([*torchrun, "--nproc_per_node", "2", "-m", "guppylm", "train",
                        "--data", str(data_dir), "--run-dir", str(run), "--preset", "guppy-tiny",
                        "--steps", "6", "--eval-every", "3", "--device", "cpu", "--quiet"],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "model.safetensors").is_file()
    assert [m["step"] for m in metrics(run) if "loss" in m] == list(range(1, 7))
