"""`guppy export`: each export is proven by its ecosystem's own library producing our tokens.

A tiny model is trained once for the module (about 10 s on 2 cores). transformers loads the
hf export, ONNX Runtime runs the onnx export, llama-cpp-python (when installed) runs the
GGUF file, and headless Chromium runs the web export with transformers.js.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from guppylm import persona
from guppylm.chat import Guppy
from guppylm.chat_format import ASSISTANT, END, USER, encode_chat
from guppylm.cli import main
from guppylm.generate import SamplingConfig, stream
from guppylm.scoring import judge

from conftest import run_cli, train_tiny_run

GREEDY = SamplingConfig(temperature=0, max_new_tokens=40)
PROMPTS = ["are you hungry?", "how is the water?", "hi", "what do you eat?"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny trained run folder that answers in character."""
    return train_tiny_run(tmp_path_factory.mktemp("export"), steps=120)


@pytest.fixture(scope="module")
def guppy(run_dir) -> Guppy:
    return Guppy.load(run_dir)


def our_greedy(guppy: Guppy, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(prompt ids, our greedy reply ids), sampling nothing but the likeliest token, as
    other runtimes' greedy search does (no topic rule: topics are just tokens there)."""
    tok = guppy.tok
    ids, _ = encode_chat(tok, messages, add_generation_prompt=True)
    stop = (tok.end_id, tok.user_id, tok.assistant_id)
    return ids, list(stream(guppy.model, ids, GREEDY, stop_ids=stop))


def in_character(reply: str, run_dir: Path) -> bool:
    """The persona test's judgment: lowercase, short, no markup, no loop (any topic)."""
    return judge(reply, True, [], persona.load(str(run_dir / "persona.toml"))).in_character


def written(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- hf

@pytest.fixture(scope="module")
def hf_dir(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "minnow-hf"
    assert main(["export", "hf", str(run_dir), str(out)]) == 0
    return out


def test_hf_export_holds_the_files_transformers_reads(hf_dir, guppy):
    assert written(hf_dir) == ["config.json", "generation_config.json", "model.safetensors",
                               "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["activation_function"] == "gelu_new"
    generation = json.loads((hf_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"][0] == guppy.tok.end_id


def test_the_chat_template_gives_our_ids(hf_dir, guppy):
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    conversations = [
        [{"role": "user", "content": "are you hungry?"}],
        [{"role": "user", "content": "  ARE   You\tHUNGRY?!\n"}],  # shouty and spaced
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello."},
         {"role": "user", "content": "How Is The  Water?"}],
        [{"role": "user", "content": "hi"},
         {"role": "assistant", "content": "hello. the water is warm.", "topic": "hello"},
         {"role": "user", "content": "why?"}],
        [{"role": "user", "content": "café 🐟 ÜBER"}],
    ]
    for messages in conversations:
        ours, _ = encode_chat(guppy.tok, messages, add_generation_prompt=True)
        theirs = tok.apply_chat_template(messages, add_generation_prompt=True,
                                         return_dict=True)["input_ids"]
        assert theirs == ours, messages
        ours, _ = encode_chat(guppy.tok, messages)
        assert tok.apply_chat_template(messages, return_dict=True)["input_ids"] == ours
    for marker in (USER, END, ASSISTANT):  # each marker is one special token
        assert tok.convert_tokens_to_ids(marker) == guppy.tok.hf.token_to_id(marker)
        assert tok.decode(tok.convert_tokens_to_ids([marker]), skip_special_tokens=True) == ""


def test_transformers_gives_our_logits_and_greedy_tokens(hf_dir, guppy):
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir)
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert type(model).__name__ == "GPT2LMHeadModel"
    for text in PROMPTS:
        messages = [{"role": "user", "content": text}]
        ids, reply = our_greedy(guppy, messages)
        x = torch.tensor([ids + reply])
        with torch.no_grad():
            assert torch.allclose(model(x).logits, guppy.model(x), atol=1e-5, rtol=0)
            out = model.generate(torch.tensor([ids]), do_sample=False,
                                 max_new_tokens=GREEDY.max_new_tokens)
        generated = out[0, len(ids):].tolist()
        if generated and generated[-1] in model.generation_config.eos_token_id:
            generated = generated[:-1]
        assert generated == reply, text
        assert tok.decode(generated, skip_special_tokens=True) == guppy.tok.decode(reply)


def test_a_transformers_pipeline_answers_in_character(hf_dir, run_dir):
    import transformers
    transformers.set_seed(0)
    chat = transformers.pipeline("text-generation", model=str(hf_dir))
    for text in ("are you hungry?", "how is the water?"):
        out = chat([{"role": "user", "content": text}])
        reply = out[0]["generated_text"][-1]
        assert reply["role"] == "assistant"
        assert reply["content"].strip() and in_character(reply["content"], run_dir), reply


# ----------------------------------------------------------------------------- onnx

@pytest.fixture(scope="module")
def onnx_dir(run_dir, tmp_path_factory) -> Path:
    import onnxruntime  # noqa: F401
    out = tmp_path_factory.mktemp("onnx") / "minnow-onnx"
    assert main(["export", "onnx", str(run_dir), str(out), "--int8"]) == 0
    return out


def feed_for(session, ids: list[int], past: dict | None = None, start: int = 0) -> dict:
    from guppylm.export.ort import empty_cache

    return {"input_ids": np.array([ids]), "attention_mask": np.ones((1, start + len(ids)),
                                                                    dtype=np.int64),
            "position_ids": np.arange(start, start + len(ids))[None],
            **(past if past is not None else empty_cache(session))}


def test_onnx_export_is_laid_out_as_transformers_js_expects(onnx_dir, guppy):
    from guppylm.export.ort import load_session

    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "onnx/model.onnx",
            "onnx/model_quantized.onnx"} <= set(written(onnx_dir))
    int8, fp32 = (onnx_dir / "onnx" / n for n in ("model_quantized.onnx", "model.onnx"))
    assert int8.stat().st_size < 0.6 * fp32.stat().st_size
    session = load_session(fp32)
    cfg = guppy.model.cfg
    names = [i.name for i in session.get_inputs()]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert names[3:5] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert len(names) == 3 + 2 * cfg.n_layer
    outputs = [o.name for o in session.get_outputs()]
    assert outputs[0] == "logits" and outputs[-1] == f"present.{cfg.n_layer - 1}.value"


def test_onnx_runtime_gives_our_logits_with_and_without_the_cache(onnx_dir, guppy):
    from guppylm.export.ort import load_session

    session = load_session(onnx_dir / "onnx" / "model.onnx")
    outputs = [o.name for o in session.get_outputs()]
    ids, reply = our_greedy(guppy, [{"role": "user", "content": "are you hungry?"}])
    full = ids + reply[:5]
    with torch.no_grad():
        ours = guppy.model(torch.tensor([full]))[0].numpy()
    logits, *presents = session.run(outputs, feed_for(session, ids))  # the prompt at once
    assert np.abs(logits[0] - ours[:len(ids)]).max() < 1e-4
    for n, token in enumerate(reply[:5], start=len(ids)):  # then a token at a time
        past = {name.replace("present.", "past_key_values."): value
                for name, value in zip(outputs[1:], presents, strict=True)}
        logits, *presents = session.run(outputs, feed_for(session, [token], past, n))
        assert np.abs(logits[0, -1] - ours[n]).max() < 1e-4
    # two prompts of different lengths in one batch, the shorter one padded on the left
    short = ids[2:]
    batch = np.array([ids, [guppy.tok.end_id] * 2 + short])
    mask = np.array([[1] * len(ids), [0, 0] + [1] * len(short)])
    feed = {**feed_for(session, ids), "input_ids": batch, "attention_mask": mask,
            "position_ids": np.array([range(len(ids)), [0, 0, *range(len(short))]])}
    feed = {k: np.repeat(v, 2, axis=0) if k.startswith("past") else v for k, v in feed.items()}
    logits = session.run(["logits"], feed)[0]
    with torch.no_grad():
        alone = guppy.model(torch.tensor([short]))[0].numpy()
    assert np.abs(logits[1, 2:] - alone).max() < 1e-4
    assert np.abs(logits[0] - ours[:len(ids)]).max() < 1e-4


def test_a_greedy_reply_with_onnx_runtime_and_the_cache_is_ours(onnx_dir, guppy, run_dir):
    from guppylm.export.ort import generate, load_session

    stop = (guppy.tok.end_id, guppy.tok.user_id, guppy.tok.assistant_id)
    fp32 = load_session(onnx_dir / "onnx" / "model.onnx")
    int8 = load_session(onnx_dir / "onnx" / "model_quantized.onnx")
    agree = 0
    for text in PROMPTS:
        ids, reply = our_greedy(guppy, [{"role": "user", "content": text}])
        assert list(generate(fp32, ids, GREEDY, stop)) == reply, text
        quantized = list(generate(int8, ids, GREEDY, stop))
        agree += quantized == reply
        assert in_character(guppy.tok.decode(quantized), run_dir), guppy.tok.decode(quantized)
    assert agree >= len(PROMPTS) // 2  # int8 moves the logits a little, not the replies
    # sampling: seeded, repeatable, and in character
    sampled = [list(generate(int8, ids, SamplingConfig(seed=s), stop)) for s in (0, 0, 1)]
    assert sampled[0] == sampled[1]


# ----------------------------------------------------------------------------- gguf

@pytest.fixture(scope="module")
def gguf_file(run_dir, tmp_path_factory) -> Path:
    import gguf  # noqa: F401
    out = tmp_path_factory.mktemp("gguf") / "minnow.gguf"
    assert main(["export", "gguf", str(run_dir), str(out)]) == 0
    return out


def test_the_gguf_file_holds_gpt2_the_tokenizer_and_the_template(gguf_file, guppy):
    import gguf

    from guppylm.export.template import CHAT_TEMPLATE

    reader = gguf.GGUFReader(str(gguf_file))

    def field(name: str):
        f = reader.fields[name]
        return f.contents()

    cfg = guppy.model.cfg
    assert field("general.architecture") == "gpt2"
    assert field("gpt2.context_length") == cfg.context
    assert field("gpt2.block_count") == cfg.n_layer
    assert field("tokenizer.ggml.model") == "gpt2"
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == guppy.tok.vocab_size and tokens[guppy.tok.end_id] == END
    assert field("tokenizer.ggml.eos_token_id") == guppy.tok.end_id
    assert field("tokenizer.chat_template") == CHAT_TEMPLATE
    tensors = {t.name: t for t in reader.tensors}
    wte = guppy.model.wte.weight.detach().numpy()
    assert np.array_equal(np.asarray(tensors["token_embd.weight"].data), wte)
    qkv = guppy.model.h[0].attn.c_attn.weight.detach().numpy()
    assert np.array_equal(np.asarray(tensors["blk.0.attn_qkv.weight"].data), qkv)
    modelfile = (gguf_file.parent / "Modelfile").read_text()
    assert f"FROM ./{gguf_file.name}" in modelfile and 'PARAMETER stop "<|end|>"' in modelfile


# llama.cpp itself (llama-cpp-python builds from source for many minutes, too long for CI):
# benchmarks/bench_export.py loads the GGUF with it and compares its greedy replies with ours.


# ----------------------------------------------------------------------------- web

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@contextmanager
def static_server(folder: Path) -> Iterator[str]:
    """`python -m http.server` in `folder`, on 127.0.0.1 and a free port, in a thread."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(10)


def test_the_web_export_chats_in_a_real_browser(run_dir, guppy, tmp_path):
    from playwright import sync_api

    from guppylm.export.web import VENDOR, VENDOR_FILES

    assert all((VENDOR / name).is_file() for name in VENDOR_FILES), \
        f"{VENDOR}: empty; run `make vendor` (`make test` does)"
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: apt-get install chromium (.ci/run does)"
    out = tmp_path / "web"
    assert main(["export", "web", str(run_dir), str(out)]) == 0
    assert {"index.html", "model/onnx/model_quantized.onnx", "model/tokenizer.json",
            "vendor/transformers.min.js"} <= set(written(out))
    with static_server(out) as base, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 760})
            page.set_default_timeout(60_000)
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
            outside: list[str] = []
            page.on("request", lambda r: None if r.url.startswith((base, f"blob:{base}", "data:"))
                    else outside.append(r.url))
            page.goto(base + "/")
            assert page.title() == "Chat with Minnow"
            page.wait_for_function("document.body.dataset.state === 'idle'")
            # transformers.js renders the chat template into our ids
            for text in ("are you hungry?", "  ARE   you\tHUNGRY?!  "):
                messages = [{"role": "user", "content": text}]
                ids = page.evaluate("""(messages) => Array.from(
                    window.guppy.tokenizer.apply_chat_template(messages,
                        {add_generation_prompt: true, return_tensor: false,
                         return_dict: false}).map(Number))""", messages)
                assert ids == encode_chat(guppy.tok, messages, add_generation_prompt=True)[0]
            page.evaluate("""() => {
                window.seen = [];
                new MutationObserver(() => {
                    const bubbles = document.querySelectorAll('.fish .bubble');
                    if (bubbles.length) window.seen.push(
                        [document.body.dataset.state, bubbles[bubbles.length - 1].textContent]);
                }).observe(document.getElementById('log'),
                           {childList: true, subtree: true, characterData: true});
            }""")
            page.locator("#temperature").fill("0")  # the likeliest words: a stable reply
            page.fill("#input", "are you hungry?")
            page.press("#input", "Enter")
            page.wait_for_function("document.querySelectorAll('.fish').length === 1 && "
                                   "document.body.dataset.state === 'idle'")
            reply = page.locator(".fish .bubble").last.text_content()
            assert reply and in_character(reply, run_dir), reply
            seen = page.evaluate("window.seen")
            assert any(state == "replying" and 0 < len(text) < len(reply)
                       for state, text in seen), seen  # it streamed in
            assert float(page.evaluate("document.body.dataset.tokensPerSecond")) > 0
            # history: the second turn is answered with the first in the prompt
            page.locator("#temperature").fill("0.7")
            page.fill("#input", "how is the water?")
            page.click("#send")
            page.wait_for_function("document.querySelectorAll('.fish').length === 2 && "
                                   "document.body.dataset.state === 'idle'")
            assert page.locator(".msg").count() == 4
            assert page.locator(".fish .bubble").last.text_content()
            page.click("#reset")  # start over
            assert page.locator(".msg").count() == 0
            page.click(".welcome button")
            page.wait_for_function("document.querySelectorAll('.fish').length === 1 && "
                                   "document.body.dataset.state === 'idle'")
            page.screenshot(path=str(tmp_path / "web.png"))
            assert problems == [] and outside == []
        finally:
            browser.close()


# ----------------------------------------------------------------------------- bad input

def one_line_error(code: int, err: str) -> str:
    assert code == 2 and err.startswith("guppy: error: ") and err.count("\n") == 1, err
    return err


def test_a_run_folder_missing_files_or_with_wrong_weights_is_refused(capsys, run_dir,
                                                                     tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "model.safetensors").unlink()
    for fmt, out in (("hf", "hf"), ("onnx", "onnx"), ("web", "web"), ("gguf", "x.gguf")):
        err = one_line_error(*run_cli(capsys, "export", fmt, broken, tmp_path / out)[::2])
        assert "model.safetensors missing" in err
        assert not (tmp_path / out).exists()
    shutil.copy(run_dir / "model.safetensors", broken)
    config = json.loads((broken / "config.json").read_text())
    config["model"]["d_mlp"] *= 2
    (broken / "config.json").write_text(json.dumps(config))
    err = one_line_error(*run_cli(capsys, "export", "hf", broken, tmp_path / "hf")[::2])
    assert "do not match config.json" in err
    err = one_line_error(*run_cli(capsys, "export", "hf", tmp_path / "nowhere",
                                  tmp_path / "hf")[::2])
    assert "no such run folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]  # nothing half-written


def test_an_out_that_holds_something_is_replaced_only_with_force(capsys, run_dir, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    err = one_line_error(*run_cli(capsys, "export", "hf", run_dir, out)[::2])
    assert err == (f"guppy: error: {out}: exists and is not empty; choose a new folder, or "
                   "add --force to replace it\n")
    assert written(out) == ["notes.txt"]
    code, stdout, _ = run_cli(capsys, "export", "hf", run_dir, out, "--force")
    assert code == 0 and "exported" in stdout and "notes.txt" not in written(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary folder left
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(capsys, "export", "hf", run_dir, empty)[0] == 0  # an empty OUT is fine
    gguf_out = tmp_path / "m.gguf"
    gguf_out.write_text("not mine to overwrite")
    err = one_line_error(*run_cli(capsys, "export", "gguf", run_dir, gguf_out)[::2])
    assert "exists" in err and "--force" in err
    err = one_line_error(*run_cli(capsys, "export", "gguf", run_dir, tmp_path / "m.bin")[::2])
    assert "not a .gguf file name" in err


def test_an_export_that_fails_midway_leaves_nothing(monkeypatch, run_dir, tmp_path):
    from guppylm.export import hf

    def half(model, tok, folder):
        (folder / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(hf, "write_hf", half)
    with pytest.raises(RuntimeError):
        hf.export_hf(run_dir, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def test_web_without_the_vendored_javascript_says_how_to_get_it(capsys, run_dir, tmp_path):
    (tmp_path / "vendor").mkdir()
    err = one_line_error(*run_cli(capsys, "export", "web", run_dir, tmp_path / "web",
                                  "--vendor", tmp_path / "vendor")[::2])
    assert "make vendor" in err and not (tmp_path / "web").exists()


def test_a_missing_optional_package_is_named_with_how_to_install_it():
    from guppylm.errors import GuppyError
    from guppylm.export.folder import need

    with pytest.raises(GuppyError, match=r"needs the package 'no_such_pkg_for_guppy', which is "
                                         r"missing; install them with `pip install "):
        need("json", "no_such_pkg_for_guppy", purpose="guppy export onnx")
