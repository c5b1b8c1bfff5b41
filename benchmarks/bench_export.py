"""Each export measured against our own PyTorch loop: sizes, speed, and the persona test.

    python benchmarks/bench_export.py runs/guppy [--prompts N] [--seeds 0 1 2] [--no-browser]

Exports the run folder to a temporary directory (hf, onnx --int8, gguf, web), then prints:

1. the size of each export;
2. generation speed on this CPU, all runtimes in one run and on the same prompts: our
   PyTorch loop with its KV cache (generate.py), transformers' `generate`, ONNX Runtime fp32
   and int8 (export/ort.py's loop), llama.cpp (llama-cpp-python, when installed), and
   transformers.js in headless Chromium (the web export's page). Tokens/s count decoding
   only: from the first new token to the last (64 new tokens per prompt, EOS ignored), as
   the web page measures it, so that prefill and start-up costs do not blur the comparison;
3. how many greedy replies of each runtime are ours, character for character (the proof
   that each computes what our model does; for llama.cpp, the proof CI cannot run);
4. the persona-test pass rate (guppylm.evaluate's prompts, scored by guppylm.scoring.judge)
   of each runtime with its own sampling at temperature 0.7, top-k 40, top-p 0.9 and seeds
   0, 1, 2, next to ours (`run_persona_test`, which also names the topic greedily first).
   A reply passes when it is in character (it ended with <|end|>, lowercase, short, no
   markup, no loop) and on topic.

The figures of docs/export.md come from this script.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from machine import cpu_name  # benchmarks/machine.py

from guppylm import persona as persona_mod
from guppylm.chat import Guppy
from guppylm.chat_format import encode_chat
from guppylm.evaluate import load_persona_test, persona_test_path, rate, run_persona_test
from guppylm.export import export
from guppylm.export.ort import generate as ort_generate
from guppylm.export.ort import load_session
from guppylm.generate import SamplingConfig, stream
from guppylm.scoring import judge

SPEED_PROMPTS = ["hi guppy", "are you hungry?", "how is the water today?", "tell me a joke",
                 "what do you think about cats?", "i failed my exam today",
                 "do you like music?", "what is the meaning of life?"]
NEW_TOKENS = 64
SAMPLING = SamplingConfig(temperature=0.7, top_k=40, top_p=0.9, max_new_tokens=80)

# A runtime, for the persona test: (messages, seed) -> (reply text, ended with <|end|>)
Responder = Callable[[list[dict], int], tuple[str, bool]]
# ... and for speed: prompt ids -> an iterator of NEW_TOKENS new token ids
Streamer = Callable[[list[int]], Iterator[int]]


def size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(
        p.stat().st_size for p in path.rglob("*") if p.is_file())


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# ----------------------------------------------------------------------------- runtimes

def reply_from(tokens: Iterator[int], tok, limit: int) -> tuple[str, bool]:
    """Read a reply as `Guppy.stream` does: <|end|> ends it properly, a new turn marker or
    the length limit does not."""
    new: list[int] = []
    for token in tokens:
        if token == tok.end_id:
            return tok.decode(new), True
        if token in (tok.user_id, tok.assistant_id) or len(new) >= limit:
            break
        new.append(token)
    return tok.decode(new), False


class Runtimes:
    """Every runtime on the same exported model, as a Responder and a Streamer each."""

    def __init__(self, run: Path, out: Path, threads: int):
        torch.set_num_threads(threads)
        self.guppy = Guppy.load(run)
        self.tok, self.context = self.guppy.tok, self.guppy.model.cfg.context
        import transformers

        self.hf = transformers.AutoModelForCausalLM.from_pretrained(out / "hf").eval()
        self.hf_tok = transformers.AutoTokenizer.from_pretrained(out / "hf")
        self.fp32 = load_session(out / "onnx" / "onnx" / "model.onnx", threads)
        self.int8 = load_session(out / "onnx" / "onnx" / "model_quantized.onnx", threads)
        self.llama = None
        try:
            import llama_cpp

            self.llama = llama_cpp.Llama(str(out / "guppy.gguf"), n_ctx=self.context,
                                         n_threads=threads, n_threads_batch=threads,
                                         verbose=False, seed=0)
        except ImportError:
            pass

    def ids(self, messages: list[dict]) -> list[int]:
        return encode_chat(self.tok, messages, add_generation_prompt=True)[0]

    # the persona test ------------------------------------------------------------
    def transformers_reply(self, messages: list[dict], seed: int) -> tuple[str, bool]:
        import transformers

        transformers.set_seed(seed)
        ids = self.hf_tok.apply_chat_template(messages, add_generation_prompt=True,
                                              return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = self.hf.generate(ids, do_sample=True, temperature=SAMPLING.temperature,
                                   top_k=SAMPLING.top_k, top_p=SAMPLING.top_p,
                                   max_new_tokens=SAMPLING.max_new_tokens)
        return reply_from(iter(out[0, ids.shape[1]:].tolist()), self.tok, 10**6)

    def ort_reply(self, session) -> Responder:
        def respond(messages: list[dict], seed: int) -> tuple[str, bool]:
            cfg = SamplingConfig(**{**vars(SAMPLING), "seed": seed})
            tokens = ort_generate(session, self.ids(messages), cfg, context=self.context)
            return reply_from(tokens, self.tok, 10**6)
        return respond

    def llama_reply(self, messages: list[dict], seed: int) -> tuple[str, bool]:
        out = self.llama.create_chat_completion(
            messages, temperature=SAMPLING.temperature, top_k=SAMPLING.top_k,
            top_p=SAMPLING.top_p, min_p=0.0, repeat_penalty=1.0, seed=seed,
            max_tokens=SAMPLING.max_new_tokens)
        choice = out["choices"][0]
        return choice["message"]["content"], choice["finish_reason"] == "stop"

    # greedy: the proof that each runtime computes what ours does --------------------
    def greedy(self, messages: list[dict]) -> dict[str, str]:
        """Each runtime's greedy reply (the likeliest token at every step, no topic rule)."""
        ids, tok, limit = self.ids(messages), self.tok, SAMPLING.max_new_tokens
        stop = (tok.end_id, tok.user_id, tok.assistant_id)
        cfg = SamplingConfig(temperature=0, max_new_tokens=limit)
        replies = {"ours": tok.decode(list(stream(self.guppy.model, ids, cfg, stop_ids=stop)))}
        with torch.no_grad():
            out = self.hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=limit)
        replies["transformers generate"] = reply_from(iter(out[0, len(ids):].tolist()), tok,
                                                      limit)[0]
        for name, session in (("ONNX Runtime fp32", self.fp32), ("ONNX Runtime int8", self.int8)):
            replies[name] = tok.decode(list(ort_generate(session, ids, cfg, stop)))
        if self.llama is not None:
            out = self.llama.create_chat_completion(messages, temperature=0, top_k=1,
                                                    max_tokens=limit)
            replies["llama.cpp (f32 GGUF)"] = out["choices"][0]["message"]["content"]
        return replies

    # speed -----------------------------------------------------------------------
    def ours_tokens(self, ids: list[int]) -> Iterator[int]:
        cfg = SamplingConfig(**{**vars(SAMPLING), "max_new_tokens": NEW_TOKENS, "seed": 0})
        return stream(self.guppy.model, ids, cfg)

    def transformers_tokens(self, ids: list[int]) -> Iterator[int]:
        stamps: list[float] = []  # the times of the new tokens: this streamer yields those
        with torch.no_grad():
            self.hf.generate(torch.tensor([ids]), do_sample=True, temperature=0.7, top_k=40,
                             top_p=0.9, min_new_tokens=NEW_TOKENS, max_new_tokens=NEW_TOKENS,
                             streamer=_Timed(stamps))
        return iter(stamps)

    def ort_tokens(self, session) -> Streamer:
        def tokens(ids: list[int]) -> Iterator[int]:
            cfg = SamplingConfig(**{**vars(SAMPLING), "max_new_tokens": NEW_TOKENS, "seed": 0})
            return ort_generate(session, ids, cfg)
        return tokens

    def llama_tokens(self, ids: list[int]) -> Iterator[int]:
        self.llama.reset()
        for n, token in enumerate(self.llama.generate(ids, temp=0.7, top_k=40, top_p=0.9,
                                                      min_p=0.0, repeat_penalty=1.0,
                                                      reset=True), 1):
            yield token
            if n == NEW_TOKENS:
                return


class _Timed:
    """A transformers streamer that records the time of each new token (not the prompt)."""

    def __init__(self, stamps: list):
        self.stamps, self.prompt_seen = stamps, False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.stamps.append(time.perf_counter())
        self.prompt_seen = True

    def end(self) -> None:
        pass


def decode_speed(tokens: Streamer, prompts: list[list[int]], stamped: bool = False) -> float:
    """Tokens per second from the first new token to the last, over all prompts."""
    next(iter(tokens(prompts[0])), None)  # warm up
    count, seconds = 0, 0.0
    for ids in prompts:
        if stamped:  # the streamer gives the times itself
            times = list(tokens(ids))
        else:
            times = [time.perf_counter() for _ in tokens(ids)]
        count += len(times) - 1
        seconds += times[-1] - times[0]
    return count / seconds


# ----------------------------------------------------------------------------- the browser

def browser_speed(web: Path, prompts: list[str]) -> float | None:
    """Median tokens/s the web page reports for `prompts`, in headless Chromium."""
    if shutil.which("chromium") is None:
        return None
    from playwright.sync_api import sync_playwright

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Quiet, directory=str(web)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    speeds = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
            page = browser.new_page()
            page.set_default_timeout(120_000)
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.wait_for_function("document.body.dataset.state === 'idle'")
            for i, text in enumerate(prompts):
                page.click("#reset")
                page.fill("#input", text)
                page.press("#input", "Enter")
                page.wait_for_function("document.querySelectorAll('.fish').length === 1 && "
                                       "document.body.dataset.state === 'idle'")
                tps = page.evaluate("document.body.dataset.tokensPerSecond")
                page.evaluate("delete document.body.dataset.tokensPerSecond")
                if i > 0 and tps:  # the first reply warms up
                    speeds.append(float(tps))
            browser.close()
    finally:
        server.shutdown()
    return statistics.median(speeds) if speeds else None


# ----------------------------------------------------------------------------- main

def persona_rate(respond: Responder, test, persona, seeds) -> float:
    passed = []
    for prompt in test.prompts:
        for seed in seeds:
            text, ended = respond([{"role": "user", "content": prompt.text}], seed)
            passed.append(judge(text, ended, prompt.expect, persona).passed)
    return sum(passed) / len(passed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--prompts", type=int, help="the first N persona-test prompts only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of every runtime (default 1: a tiny model's matrices "
                             "are too small to share; the browser's WebAssembly uses 1 too)")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()

    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores); python {platform.python_version()}, "
          f"torch {torch.__version__}; load average {os.getloadavg()[0]:.1f} before starting")
    out = Path(tempfile.mkdtemp(prefix="bench_export_"))
    try:
        seconds = {}
        for fmt, target in (("hf", out / "hf"), ("onnx", out / "onnx"),
                            ("gguf", out / "guppy.gguf"), ("web", out / "web")):
            start = time.perf_counter()
            export(fmt, args.run, target, int8=True)
            seconds[fmt] = time.perf_counter() - start
        report(args, out, seconds)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def report(args: argparse.Namespace, out: Path, seconds: dict) -> None:
    rt = Runtimes(args.run, out, args.threads)
    cfg = rt.guppy.model.cfg
    print(f"model: {args.run} ({cfg.n_layer} layers x {cfg.d_model}, vocab {cfg.vocab_size}, "
          f"{rt.guppy.model.num_params():,} parameters)\n")

    onnx = out / "onnx" / "onnx"
    web = out / "web"
    print("export                         size      took")
    rows = [("run folder: model.safetensors", size(args.run / "model.safetensors"), None),
            ("hf: model.safetensors", size(out / "hf" / "model.safetensors"), None),
            ("hf: whole folder", size(out / "hf"), seconds["hf"]),
            ("onnx: model.onnx (fp32)", size(onnx / "model.onnx"), None),
            ("onnx: model_quantized.onnx", size(onnx / "model_quantized.onnx"), None),
            ("onnx: whole folder (--int8)", size(out / "onnx"), seconds["onnx"]),
            ("gguf: guppy.gguf (f32)", size(out / "guppy.gguf"), seconds["gguf"]),
            ("web: model/ (int8 + tokenizer)", size(web / "model"), None),
            ("web: vendor/ (transformers.js)", size(web / "vendor"), None),
            ("web: whole folder", size(web), seconds["web"])]
    for name, n, took in rows:
        print(f"{name:<30} {mb(n):>8}  {f'{took:.1f} s' if took else ''}")

    prompts = [rt.ids([{"role": "user", "content": p}]) for p in SPEED_PROMPTS]
    print(f"\ngeneration speed: decode tokens/s ({len(prompts)} prompts x {NEW_TOKENS} new "
          f"tokens, sampled, one at a time; {args.threads} thread(s) each)")
    speeds = [("ours: PyTorch + KV cache", rt.ours_tokens, False),
              ("transformers generate", rt.transformers_tokens, True),
              ("ONNX Runtime fp32", rt.ort_tokens(rt.fp32), False),
              ("ONNX Runtime int8", rt.ort_tokens(rt.int8), False)]
    if rt.llama is not None:
        speeds.append(("llama.cpp (f32 GGUF)", rt.llama_tokens, False))
    for name, tokens, stamped in speeds:
        print(f"  {name:<28} {decode_speed(tokens, prompts, stamped):8.0f}")
    if not args.no_browser:
        tps = browser_speed(web, SPEED_PROMPTS[:5])
        shown = f"{tps:8.0f}" if tps else "     n/a (chromium missing)"
        print(f"  {'transformers.js int8, Chromium':<28} {shown}   (replies end at <|end|>)")

    persona_path = args.run / "persona.toml"
    persona = persona_mod.load(str(persona_path))
    test = load_persona_test(persona_test_path(persona_path), persona)
    test.prompts = test.prompts[:args.prompts] if args.prompts else test.prompts

    same: dict[str, int] = {}
    for prompt in test.prompts:
        replies = rt.greedy([{"role": "user", "content": prompt.text}])
        for name, reply in replies.items():
            same[name] = same.get(name, 0) + (reply == replies["ours"])
    print(f"\ngreedy replies identical to ours, character for character "
          f"({len(test.prompts)} persona-test prompts)")
    for name, n in same.items():
        if name != "ours":
            print(f"  {name:<28} {n:4d} / {len(test.prompts)}")
    seeds = tuple(args.seeds)
    print(f"\npersona test: {len(test.prompts)} prompts x seeds {list(seeds)}, temperature "
          f"{SAMPLING.temperature}, top-k {SAMPLING.top_k}, top-p {SAMPLING.top_p}")
    start = time.perf_counter()
    ours = rate(run_persona_test(rt.guppy, test, persona, seeds=seeds))
    print(f"  {'ours (guppy chat)':<28} {ours:6.1%}   ({time.perf_counter() - start:.0f} s)")
    runtimes = [("transformers generate", rt.transformers_reply),
                ("ONNX Runtime fp32", rt.ort_reply(rt.fp32)),
                ("ONNX Runtime int8", rt.ort_reply(rt.int8))]
    if rt.llama is not None:
        runtimes.append(("llama.cpp (f32 GGUF)", rt.llama_reply))
    for name, respond in runtimes:
        start = time.perf_counter()
        got = persona_rate(respond, test, persona, seeds)
        print(f"  {name:<28} {got:6.1%}   {100 * (got - ours):+5.1f} points vs ours  "
              f"({time.perf_counter() - start:.0f} s)")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    sys.exit(main())
