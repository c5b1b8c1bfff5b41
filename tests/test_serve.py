"""`guppy serve`: the OpenAI-compatible server, its batched decoding and its chat page.

A tiny model is trained once for the module; servers run in a thread on 127.0.0.1 and a free
port, and are driven by the official `openai` client, raw HTTP, and headless Chromium.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the server's extra: pip install -e '.[serve]'")
pytest.importorskip("openai", reason="the dev extra: pip install -e '.[dev]'")
from dataclasses import replace  # noqa: E402

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from openai import OpenAI  # noqa: E402

from guppylm.chat import Guppy  # noqa: E402
from guppylm.chat_format import first_sentence, opening_to_avoid
from guppylm.decode import (  # noqa: E402
    OPENING_TRIES,
    BatchDecoder,
    KVCache,
    ScoredChunk,
    Sequence,
    forward_step,
    sampling_for,
)
from guppylm.generate import stream  # noqa: E402
from guppylm.probe import ProbeConfig, inspect_prompt  # noqa: E402
from guppylm.serve import _fitting_tail, create_app  # noqa: E402

from conftest import train_tiny_run  # noqa: E402

USER = [{"role": "user", "content": "are you hungry?"}]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny trained run folder (about 10 s on 2 cores)."""
    return train_tiny_run(tmp_path_factory.mktemp("serve"), steps=40)


@pytest.fixture(scope="module")
def guppy(run_dir) -> Guppy:
    return Guppy.load(run_dir)


@contextmanager
def serving(app) -> Iterator[str]:
    """Run `app` with uvicorn in a thread on 127.0.0.1 and a free port; yield its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


class Gate:
    """Holds the decode loop before each step until the test lets steps through, so that a
    test decides what is in flight (and nothing depends on timing)."""

    def __init__(self, app):
        self.decoder = app.state.decoding.decoder
        self.permits = threading.Semaphore(0)
        step = self.decoder.step

        def gated_step():
            self.permits.acquire()
            return step()

        self.decoder.step = gated_step

    def let(self, steps: int = 1) -> None:
        self.permits.release(steps)

    def open(self) -> None:
        self.permits.release(1_000_000)


def slow_steps(app, seconds: float) -> None:
    decoder = app.state.decoding.decoder
    step = decoder.step

    def slow_step():
        time.sleep(seconds)
        return step()

    decoder.step = slow_step


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def url(guppy) -> Iterator[str]:
    with serving(create_app(guppy, "tiny")) as base:
        yield base


@pytest.fixture(scope="module")
def client(url) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=30)


# ----------------------------------------------------------------------------- decoding

def mixed_requests() -> list[tuple[list[dict], dict]]:
    """(messages, sampling overrides) of every kind: greedy and sampled, short and long
    limits, and histories whose replies this tiny model often repeats (drawn again)."""
    prompts = ["are you hungry?", "hi", "how is the water?", "tell me more", "HELLO there!!",
               "what do you eat?", "is your tank clean?", "so, dinner time?"]
    requests = []
    for i in range(16):
        requests.append(([{"role": "user", "content": prompts[i % len(prompts)]}], dict(
            seed=i, temperature=(0.0, 0.7, 1.4)[i % 3], top_k=(0, 40, 5)[i % 3],
            top_p=(1.0, 0.9, 0.5)[i // 3 % 3], max_new_tokens=(3, 30, 90)[i % 3])))
    for i in range(12):  # after an answer this tiny model often opens with: drawn again
        said = [{"role": "user", "content": prompts[i % 4]},
                {"role": "assistant", "content": ("i eat.", "i water.", "the water.")[i % 3]},
                {"role": "user", "content": prompts[i % 4]}]
        requests.append((said, dict(seed=100 + i, temperature=0.7, max_new_tokens=30)))
    return requests


def decode_together(guppy, requests, top_logprobs=lambda i: None):
    """Decode `requests` in one BatchDecoder, joining at seeded random steps; return each
    one's Sequence and chunks. `top_logprobs(i)`: what request i asks for."""
    decoder = BatchDecoder(guppy.model, guppy.tok)
    got: dict[int, list] = {}
    seqs = []
    for i, (messages, overrides) in enumerate(requests):
        cfg = sampling_for(guppy.sampling, **overrides)
        got[i] = []
        seqs.append(Sequence(guppy.prompt_ids(messages, cfg.max_new_tokens), cfg,
                             avoid=opening_to_avoid(messages), emit=got[i].append,
                             top_logprobs=top_logprobs(i)))
    pending, rng = list(seqs), random.Random(0)
    while pending or decoder.active:
        for _ in range(rng.randint(0, 3)):  # new sequences join between steps
            if pending:
                decoder.add(pending.pop(0))
        for seq, chunk in decoder.step():
            seq.emit(chunk)
    return seqs, got


def test_batched_decoding_gives_the_chunks_of_guppy_stream_alone(guppy):
    """Requests of every kind decoded together, joining at different steps, give exactly
    what `Guppy.stream` gives for each alone: the same tokens, the same chunks."""
    requests = mixed_requests()
    seqs, got = decode_together(guppy, requests)
    for i, (messages, overrides) in enumerate(requests):
        assert got[i] == list(guppy.stream(messages, **overrides)), overrides
    assert {seq.finish for seq in seqs} == {"stop", "length"}


def test_greedy_replies_are_those_of_generate_stream(guppy):
    """The batched arithmetic is GPT.forward's: greedy, it chooses what generate.stream
    (the plain loop a learner reads) chooses."""
    for text in ("are you hungry?", "hi", "what do you think about cats?"):
        said = [{"role": "user", "content": text}]
        seqs, _ = decode_together(guppy, [(said, {"temperature": 0, "max_new_tokens": 40})])
        cfg = sampling_for(guppy.sampling, temperature=0, max_new_tokens=40)
        alone = list(stream(guppy.model, seqs[0].prompt, cfg, topic_ids=tuple(guppy.tok.topics)))
        assert seqs[0].tokens == alone[:len(seqs[0].tokens)]


def test_asking_for_probabilities_changes_no_token(guppy):
    """The same requests decoded with scores asked (by every other one, the rest plain)
    give the same tokens, bit for bit, and the same chunks, plus one score per reply token."""
    requests = mixed_requests()
    plain_seqs, plain = decode_together(guppy, requests)
    seqs, scored = decode_together(guppy, requests, lambda i: (5, None, 0)[i % 3])
    for i, seq in enumerate(seqs):
        assert seq.tokens == plain_seqs[i].tokens
        assert [(c.text, c.topic, c.finish) for c in scored[i]] == \
            [(c.text, c.topic, c.finish) for c in plain[i]]
        if seq.top_logprobs is None:
            assert all(type(c) is not ScoredChunk for c in scored[i])
            continue
        assert all(type(c) is ScoredChunk for c in scored[i])
        scores = [s for c in scored[i] for s in c.scores]
        assert [s.id for s in scores] == seq.reply  # of the try that was kept
        assert all(len(s.top) == seq.top_logprobs for s in scores)
        topic_scores = [c.topic_score for c in scored[i] if c.topic]
        assert all(t is not None and t.id in guppy.tok.topics for t in topic_scores)
    # a reply drawn again (it opened as the last did): the dropped try's scores go with it
    for seed in range(3):
        opening = first_sentence(guppy.respond(USER, seed=seed, max_new_tokens=30).text)
        cfg = sampling_for(guppy.sampling, seed=seed, max_new_tokens=30)
        runs = []
        for top in (None, 5):
            chunks: list = []
            seq = Sequence(guppy.prompt_ids(USER, 30), cfg, avoid=opening, top_logprobs=top,
                           emit=chunks.append)
            decoder = BatchDecoder(guppy.model, guppy.tok)
            decoder.add(seq)
            while decoder.active:
                for s, chunk in decoder.step():
                    s.emit(chunk)
            runs.append((seq, chunks))
        (plain_seq, _), (seq, chunks) = runs
        assert seq.tries > 1 and seq.tokens == plain_seq.tokens
        assert [s.id for c in chunks for s in c.scores] == seq.reply


def test_a_restored_topic_is_the_one_the_model_chose(guppy):
    for i, text in enumerate(["are you hungry?", "how is the water?", "hi"]):
        said = [{"role": "user", "content": text}]
        reply = guppy.respond(said, seed=i)
        restored = guppy.restore_topics(said + [reply.message()])[-1]
        assert reply.topic is not None and restored.get("topic") == reply.topic


def test_a_reply_that_opens_as_the_last_did_is_drawn_again_as_guppy_stream_does(
        guppy, monkeypatch):
    from guppylm import chat
    from guppylm.chat_format import first_sentence

    said = [{"role": "user", "content": "are you hungry?"}]
    for seed in range(6):
        opening = first_sentence(guppy.respond(said, seed=seed, max_new_tokens=30).text)
        monkeypatch.setattr(chat, "opening_to_avoid", lambda messages, opening=opening: opening)
        alone = list(guppy.stream(said, seed=seed, max_new_tokens=30))
        got: list = []
        cfg = sampling_for(guppy.sampling, seed=seed, max_new_tokens=30)
        seq = Sequence(guppy.prompt_ids(said, 30), cfg, avoid=opening, emit=got.append)
        decoder = BatchDecoder(guppy.model, guppy.tok)
        decoder.add(seq)
        while decoder.active:
            for s, chunk in decoder.step():
                s.emit(chunk)
        assert got == alone and seq.tries > 1  # its first try opened with `opening`
        again = first_sentence("".join(c.text for c in got))
        assert again != opening or seq.tries == OPENING_TRIES


def test_a_stop_string_ends_the_reply_and_never_shows_in_part(guppy):
    overrides = dict(temperature=1.0, max_new_tokens=60)
    seed, reply = next((s, r) for s in range(200)
                       if len(r := guppy.respond(USER, seed=s, **overrides).text) >= 12)
    for start, length in ((0, 3), (4, 6), (len(reply) - 5, 5), (2, 1)):
        stop = reply[start:start + length]
        cfg = sampling_for(guppy.sampling, seed=seed, **overrides)
        chunks = []
        decoder = BatchDecoder(guppy.model, guppy.tok)
        decoder.add(Sequence(guppy.prompt_ids(USER, 60), cfg, stop=("never said", stop),
                             emit=chunks.append))
        while decoder.active:
            for seq, chunk in decoder.step():
                seq.emit(chunk)
        assert "".join(c.text for c in chunks) == reply[:reply.find(stop)]
        assert chunks[-1].finish == "stop"


def test_a_batched_step_computes_each_row_bit_for_bit_as_alone(guppy):
    """A row's logits do not depend on the batch: its size, the row's slot, the other rows'
    lengths (one far longer reads more cache positions). And they are GPT.forward's."""
    model = guppy.model
    torch.manual_seed(0)
    prompts = [torch.randint(0, model.cfg.vocab_size, (n,)).tolist()
               for n in (3, 17, 40, 9, 120, 12, 70, 5, 33, 21)]

    def step(batch: list[list[int]]) -> torch.Tensor:
        cache = KVCache(model, slots=len(batch))
        with torch.inference_mode():
            for slot, ids in enumerate(batch):
                caches = [{} for _ in model.h]
                model(torch.tensor([ids[:-1]]), caches=caches)
                cache.fill(slot, caches)
            return forward_step(model, cache, list(range(len(batch))),
                                [ids[-1] for ids in batch], [len(ids) - 1 for ids in batch])

    alone = [step([ids])[0] for ids in prompts]
    for order in (prompts, prompts[::-1], prompts[2:5]):
        for row, ids in zip(step(order), order, strict=True):
            assert torch.equal(row, alone[prompts.index(ids)])
    with torch.inference_mode():
        for ids, row in zip(prompts, alone, strict=True):
            assert torch.allclose(row, model(torch.tensor([ids]))[0, -1], atol=1e-4)


def test_trimming_a_long_history_first_changes_nothing(guppy):
    rng = random.Random(1)
    for n in (1, 3, 40, 65, 66, 67, 200, 301):
        messages = [{"role": ("user", "assistant")[i % 2],
                     "content": rng.choice(["hi", "", "are you hungry today little fish?"])}
                    for i in range(n)]
        tail = _fitting_tail(messages, guppy.model.cfg.context)
        assert guppy.prompt_ids(tail, 40) == guppy.prompt_ids(messages, 40)


# ----------------------------------------------------------------------------- the openai client

def test_a_plain_completion(client, guppy):
    r = client.chat.completions.create(model="tiny", messages=USER, seed=1, max_tokens=60)
    alone = guppy.respond(USER, seed=1, max_new_tokens=60)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.created > 0
    assert r.model == "tiny" and len(r.choices) == 1
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == alone.text
    assert choice.message.model_extra["topic"] == alone.topic
    assert choice.finish_reason == alone.finish
    assert r.usage.prompt_tokens == len(guppy.prompt_ids(USER, 60))
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # at the limit: exactly max_tokens generated, and finish_reason "length"
    r = client.chat.completions.create(model="tiny", messages=USER, seed=1, max_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2
    # a stop string ends the reply before it, with finish_reason "stop"
    first_word = alone.text.split()[0][:2] if alone.text.strip() else "e"
    r = client.chat.completions.create(model="tiny", messages=USER, seed=1, max_tokens=60,
                                       stop=[first_word])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == alone.text[:alone.text.find(first_word)]


def test_a_streamed_completion(client, guppy, url):
    alone = guppy.respond(USER, seed=2, max_new_tokens=60)
    chunks = list(client.chat.completions.create(
        model="tiny", messages=USER, seed=2, max_tokens=60, stream=True,
        stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.model == "tiny" for c in chunks)
    deltas = [c.choices[0] for c in chunks if c.choices]
    assert deltas[0].delta.role == "assistant"
    assert "".join(d.delta.content or "" for d in deltas) == alone.text
    assert [d.delta.model_extra.get("topic") for d in deltas if d.delta.model_extra.get("topic")] \
        == [alone.topic]
    assert [d.finish_reason for d in deltas if d.finish_reason] == [alone.finish]
    assert deltas[-1].finish_reason == alone.finish
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == len(
        guppy.prompt_ids(USER, 60))
    # on the wire: complete JSON objects as Server-Sent Events, then [DONE]
    body = {"messages": USER, "seed": 2, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert all(json.loads(e[6:])["object"] == "chat.completion.chunk" for e in events[:-1])


def test_logprobs_in_openais_shape_only_when_asked(client, guppy):
    """`logprobs=True, top_logprobs=5`: each reply token with its log-probability and the 5
    likeliest, in OpenAI's shape; the topic's distribution beside the topic. The same
    probabilities `guppy inspect` measures, and the same reply as without them."""
    asked = dict(model="tiny", messages=USER, max_tokens=60, temperature=0)
    r = client.chat.completions.create(**asked, logprobs=True, top_logprobs=5)
    plain = client.chat.completions.create(**asked)
    message = r.choices[0].message
    assert message.content == plain.choices[0].message.content
    assert plain.choices[0].logprobs is None  # nothing new for a plain client
    assert set(plain.choices[0].message.model_extra) == {"topic"}
    entries = r.choices[0].logprobs.content
    assert b"".join(bytes(e.bytes) for e in entries).decode() == message.content
    for e in entries:
        top = [t.logprob for t in e.top_logprobs]
        assert len(top) == 5 and top == sorted(top, reverse=True)
        assert (e.token, e.logprob) == (e.top_logprobs[0].token, top[0])  # greedy
        assert all(t.token == bytes(t.bytes).decode("utf-8", "replace") for t in e.top_logprobs)
    seen = inspect_prompt(guppy.model, guppy.tok, ProbeConfig(USER[0]["content"],
                                                              max_new_tokens=60))
    words = [s for s in seen.steps if not s.chosen.token.special]
    assert [s.chosen.token.piece for s in words] == [e.token for e in entries]
    assert [math.exp(e.logprob) for e in entries] == pytest.approx(
        [s.chosen.prob for s in words], rel=1e-4)
    topics = message.model_extra["topic_logprobs"]
    assert topics["topic"] == message.model_extra["topic"] == seen.chosen_topic
    ranked = topics["top_logprobs"]  # the tiny persona has 3 topics: all of them
    assert [t["topic"] for t in ranked] == [name for name, _ in seen.topic.ranked]
    assert [math.exp(t["logprob"]) for t in ranked] == pytest.approx(
        [p for _, p in seen.topic.ranked], rel=1e-4)
    # sampled: the same reply as without, and the chosen token's score agrees with the top
    sampled = dict(model="tiny", messages=USER, max_tokens=40, temperature=1.4, seed=3)
    r = client.chat.completions.create(**sampled, logprobs=True, top_logprobs=3)
    assert r.choices[0].message.content == \
        client.chat.completions.create(**sampled).choices[0].message.content
    for e in r.choices[0].logprobs.content:
        top = {t.token: t.logprob for t in e.top_logprobs}
        assert e.logprob <= max(top.values()) + 1e-6
        assert (e.token in top) == (e.logprob >= min(top.values()) - 1e-6)
        assert e.token not in top or top[e.token] == pytest.approx(e.logprob, abs=1e-6)
    r = client.chat.completions.create(**sampled, logprobs=True)  # top_logprobs: 0
    assert r.choices[0].logprobs.content and \
        all(e.top_logprobs == [] for e in r.choices[0].logprobs.content)


def test_streamed_logprobs_ride_on_their_chunks(client):
    asked = dict(model="tiny", messages=USER, max_tokens=60, seed=5, stream=True)
    whole = client.chat.completions.create(**{**asked, "stream": False}, logprobs=True,
                                           top_logprobs=4)
    chunks = list(client.chat.completions.create(**asked, logprobs=True, top_logprobs=4))
    choices = [c.choices[0] for c in chunks]
    entries = [e for c in choices if c.logprobs for e in c.logprobs.content]
    assert [e.model_dump() for e in entries] == \
        [e.model_dump() for e in whole.choices[0].logprobs.content]
    for c in choices:  # each chunk's entries spell its text
        if c.logprobs:
            assert b"".join(bytes(e.bytes) for e in c.logprobs.content).decode() == \
                c.delta.content
    topics = [c.delta.model_extra["topic_logprobs"] for c in choices
              if c.delta.model_extra.get("topic")]
    assert topics == [whole.choices[0].message.model_extra["topic_logprobs"]]
    plain = list(client.chat.completions.create(**asked))
    assert all(c.choices[0].logprobs is None for c in plain if c.choices)
    assert not any("topic_logprobs" in c.choices[0].delta.model_extra for c in plain)


def test_streaming_is_off_unless_asked(url):
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": USER})
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    nulls = dict.fromkeys(["model", "temperature", "top_p", "max_tokens", "seed", "stop", "n",
                           "stream", "stream_options"])
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": USER, **nulls})
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"


def test_system_messages_are_ignored_and_text_parts_joined(client, guppy):
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": [{"type": "text", "text": "are you "},
                                             {"type": "text", "text": "hungry?"}]}]
    r = client.chat.completions.create(model="tiny", messages=messages, seed=4)
    assert r.choices[0].message.content == guppy.chat(USER, seed=4)


def test_a_three_turn_conversation_and_a_long_one(client, guppy):
    history = []
    for i, text in enumerate(["hi", "are you hungry?", "why?"]):
        history.append({"role": "user", "content": text})
        r = client.chat.completions.create(model="tiny", messages=history, seed=i)
        assert r.choices[0].message.content == guppy.chat(history, seed=i)
        assert r.usage.prompt_tokens == len(guppy.prompt_ids(history, 80))
        history.append({"role": "assistant", "content": r.choices[0].message.content})
    # longer than the context: trimmed exactly as `guppy chat` trims it
    long = [{"role": ("user", "assistant")[i % 2], "content": "tell me more about the water"}
            for i in range(81)]
    r = client.chat.completions.create(model="tiny", messages=long, seed=3, max_tokens=30)
    assert r.usage.prompt_tokens == len(guppy.prompt_ids(long, 30)) <= guppy.model.cfg.context
    assert r.choices[0].message.content == guppy.chat(long, seed=3, max_new_tokens=30)


def test_models_and_health(client, url):
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["active"] == 0


def test_the_same_seed_gives_the_same_reply_whatever_else_is_in_the_batch(guppy):
    app = create_app(guppy, "tiny", max_batch=16)
    gate = Gate(app)
    body = {"messages": [{"role": "user", "content": "how is the water?"}], "seed": 7,
            "temperature": 1.2, "max_tokens": 40}
    others = [{"messages": [{"role": "user", "content": t}], "seed": s, "temperature": 1.0}
              for s, t in enumerate(["hi", "are you hungry?", "tell me more", "so?"] * 2)]
    replies: dict[int, str] = {}

    def ask(i: int, request: dict) -> None:
        r = httpx.post(f"{base}/v1/chat/completions", json=request, timeout=30)
        replies[i] = r.json()["choices"][0]["message"]["content"]

    with serving(app) as base:
        threads = [threading.Thread(target=ask, args=(i, b))
                   for i, b in enumerate([body, *others, body])]
        for t in threads:
            t.start()
        counts = app.state.decoding.counts
        wait_for(lambda: counts()["active"] + counts()["waiting"] == len(threads))
        gate.open()  # the first alone for a step, then all ten together
        for t in threads:
            t.join(30)
    alone = guppy.chat(body["messages"], seed=7, temperature=1.2, max_new_tokens=40)
    assert replies[0] == replies[len(threads) - 1] == alone


def test_serve_loads_once_prints_the_url_and_listens_on_localhost(run_dir):
    code = "import sys; from guppylm.serve import serve; serve(sys.argv[1], port=0)"
    server = subprocess.Popen([sys.executable, "-c", code, str(run_dir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert "open http://127.0.0.1:" in line, line
        page = line.split("open ", 1)[1].split()[0]
        assert httpx.get(page + "health", timeout=10).json()["model"] == "tiny"
        assert "<title>" in httpx.get(page, timeout=10).text
        port = int(page.rsplit(":", 1)[1].strip("/"))
        if Path("/proc/net/tcp").exists():  # Linux: which address it listens on
            assert _listening_addresses(port) == {"127.0.0.1"}
    finally:
        server.terminate()
        server.wait(20)


def _listening_addresses(port: int) -> set[str]:
    found = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(name).exists():
            continue
        for line in Path(name).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]) if len(raw) == 4
                          else raw.hex())
    return found


# ----------------------------------------------------------------------------- bad input

BAD = [
    (b'{"messages": [', None),
    (b'[{"role": "user", "content": "hi"}]', None),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', None),
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
     "messages"),
    ({"messages": [{"role": "system", "content": "be a fish"}]}, "messages"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"temperature": 1e-40}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"max_completion_tokens": -3}, "max_completion_tokens"),
    ({"seed": "seven"}, "seed"),
    ({"seed": 2**70}, "seed"),
    ({"stop": 5}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"n": 2}, "n"),
    ({"n": 0}, "n"),
    ({"stream": "yes"}, "stream"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage"),
    ({"model": 5}, "model"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 2.5}, "top_logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": False, "top_logprobs": 3}, "top_logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "swim"}}]}, "tools"),
]


@pytest.mark.parametrize(("body", "param"), BAD, ids=[str(b)[:60] for b, _ in BAD])
def test_bad_input_gets_400_saying_what_to_fix(url, body, param):
    if isinstance(body, dict):
        body = json.dumps({"messages": USER, **body}).encode() if body else b"{}"
    r = httpx.post(f"{url}/v1/chat/completions", content=body,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["type"] == "invalid_request_error"
    message = error["message"]
    assert message and "\n" not in message and len(message) < 300
    assert message.startswith(param or "the ")
    assert httpx.get(f"{url}/health").json()["status"] == "ok"  # it keeps serving


def test_a_body_over_the_size_limit_gets_400(guppy):
    with serving(create_app(guppy, "tiny", max_body_bytes=2000)) as base:
        big = {"messages": [{"role": "user", "content": "a" * 3000}]}
        r = httpx.post(f"{base}/v1/chat/completions", json=big)
        assert r.status_code == 400 and r.json()["error"]["code"] == "request_too_large"

        def chunked():  # no Content-Length: the limit holds while reading
            yield json.dumps(big).encode()

        r = httpx.post(f"{base}/v1/chat/completions", content=chunked())
        assert r.status_code == 400 and "bytes" in r.json()["error"]["message"]
        r = httpx.post(f"{base}/v1/chat/completions", json={"messages": USER})
        assert r.status_code == 200


def test_unknown_paths_and_model_names_answer_in_the_error_shape(url, client):
    r = httpx.get(f"{url}/etc/passwd")
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(f"{url}/v1/models/../../etc/passwd")
    assert r.status_code == 404 and "error" in r.json()
    # the model name is a label, never a path: any name gets this server's model
    r = client.chat.completions.create(model="../../etc/passwd", messages=USER, max_tokens=2)
    assert r.model == "tiny"


# ----------------------------------------------------------------------------- concurrency

def test_beyond_the_queue_429_at_once_and_a_disconnect_frees_the_slot(guppy):
    app = create_app(guppy, "tiny", max_batch=1, max_waiting=1)
    gate = Gate(app)
    decoding = app.state.decoding
    body = {"messages": USER, "stream": True, "max_tokens": 100}
    with serving(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as first:
            assert first.status_code == 200
            lines = first.iter_lines()
            assert next(lines).startswith("data: ")  # the role chunk: it is in flight
            wait_for(lambda: len(gate.decoder.active) == 1)
            seq = gate.decoder.active[0]
            second = threading.Thread(target=httpx.post, args=(f"{base}/v1/chat/completions",),
                                      kwargs={"json": {"messages": USER}, "timeout": 30})
            second.start()
            wait_for(lambda: decoding.counts()["waiting"] == 1)
            started = time.monotonic()
            r = httpx.post(f"{base}/v1/chat/completions", json={"messages": USER})
            assert r.status_code == 429 and time.monotonic() - started < 2
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["code"] == "rate_limit_exceeded"
            # decoding is held, yet the server answers: the event loop is never blocked
            assert httpx.get(f"{base}/health").json()["active"] == 1
        # the first client left mid-stream: its slot frees at the next step
        wait_for(lambda: seq.cancelled)
        gate.let(1)
        wait_for(lambda: seq not in gate.decoder.active)
        assert seq.tokens == [] and seq.finish is None  # dropped, not generated to the end
        gate.open()
        second.join(30)
        wait_for(lambda: decoding.counts()["active"] == decoding.counts()["waiting"] == 0)
        r = http.post("/v1/chat/completions", json={"messages": USER})
        assert r.status_code == 200


def test_a_non_streaming_client_that_leaves_frees_its_slot(guppy):
    app = create_app(guppy, "tiny", max_batch=1, max_waiting=0)
    gate = Gate(app)
    with serving(app) as base:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/v1/chat/completions", json={"messages": USER}, timeout=0.5)
        wait_for(lambda: len(gate.decoder.active) == 1)
        seq = gate.decoder.active[0]
        wait_for(lambda: seq.cancelled)
        gate.open()
        wait_for(lambda: app.state.decoding.counts()["active"] == 0)
        r = httpx.post(f"{base}/v1/chat/completions", json={"messages": USER}, timeout=30)
        assert r.status_code == 200


# ----------------------------------------------------------------------------- the page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def test_the_chat_page_in_a_real_browser(guppy, tmp_path):
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} missing; install it with `apt-get install chromium`")
    sync_api = pytest.importorskip("playwright.sync_api")
    app = create_app(guppy, "tiny")
    slow_steps(app, 0.03)  # slow enough to see the reply arrive token by token
    with serving(app) as base, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 760})
            page.set_default_timeout(20_000)
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
            outside: list[str] = []
            page.on("request", lambda r: None if r.url.startswith((base, "data:"))
                    else outside.append(r.url))
            page.goto(base + "/")
            assert page.title() == "Chat with Minnow"
            # record what the reply bubble shows while Guppy is still replying
            page.evaluate("""() => {
                window.seen = [];
                new MutationObserver(() => {
                    const bubbles = document.querySelectorAll('.fish .bubble');
                    if (bubbles.length) window.seen.push(
                        [document.body.dataset.state, bubbles[bubbles.length - 1].textContent]);
                }).observe(document.getElementById('log'),
                           {childList: true, subtree: true, characterData: true});
            }""")
            with page.expect_request("**/v1/chat/completions") as request:
                page.fill("#input", "are you hungry?")
                page.press("#input", "Enter")
            assert request.value.post_data_json["stream"] is True
            page.wait_for_function("document.body.dataset.state === 'idle'")
            reply = page.locator(".fish .bubble").last.text_content()
            assert reply
            seen = page.evaluate("window.seen")
            assert any(state == "replying" and text for state, text in seen), seen  # streamed
            # the topic shows when asked
            assert not page.locator(".fish .topic").first.is_visible()
            page.check("#show-topic")
            assert page.locator(".fish .topic").first.text_content() in guppy.tok.topics.values()
            # history is kept: the second request carries the first exchange
            page.locator("#temperature").fill("0")
            with page.expect_request("**/v1/chat/completions") as request:
                page.fill("#input", "why?")
                page.click("#send")
            sent = request.value.post_data_json
            assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
            assert sent["messages"][1]["content"] == reply and sent["temperature"] == 0
            page.wait_for_function("document.body.dataset.state === 'idle'")
            assert page.locator(".msg").count() == 4
            # "start over" clears the conversation
            page.click("#reset")
            assert page.locator(".msg").count() == 0
            with page.expect_request("**/v1/chat/completions") as request:
                page.click(".welcome button")
            assert len(request.value.post_data_json["messages"]) == 1
            page.wait_for_function("document.body.dataset.state === 'idle'")
            page.screenshot(path=str(tmp_path / "chat.png"))
            assert problems == [] and outside == []
        finally:
            browser.close()


def test_the_page_shows_the_models_thinking(guppy, tmp_path):
    """With the toggle on, the page asks for logprobs, shades each token of the reply, and
    hovering (or tapping, on a phone) a token shows its alternatives and the topics."""
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} missing; install it with `apt-get install chromium`")
    sync_api = pytest.importorskip("playwright.sync_api")
    # the page sends no seed: the server's default seed makes the reply one with a few tokens
    said = [{"role": "user", "content": "hi"}]
    seed = next(s for s in range(100) if len(guppy.tok.encode(guppy.respond(
        [*said, guppy.respond(said, seed=s).message(), {"role": "user", "content":
                                                       "are you hungry?"}], seed=s).text)) >= 3)
    seeded = Guppy(guppy.model, guppy.tok, replace(guppy.sampling, seed=seed))
    with serving(create_app(seeded, "tiny")) as base, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for width, touch in ((1000, False), (390, True)):
                page = browser.new_page(viewport={"width": width, "height": 760},
                                        has_touch=touch, is_mobile=touch)
                page.set_default_timeout(20_000)
                problems: list[str] = []
                page.on("pageerror", lambda e, problems=problems: problems.append(str(e)))
                page.goto(base + "/")
                assert not page.locator(".legend").is_visible()
                with page.expect_request("**/v1/chat/completions") as request:
                    page.fill("#input", "hi")
                    page.press("#input", "Enter")
                assert "logprobs" not in request.value.post_data_json  # off: a plain request
                page.wait_for_function("document.body.dataset.state === 'idle'")
                assert page.locator(".tok").count() == 0
                page.check("#show-thinking")
                assert page.locator(".legend").is_visible()
                with page.expect_request("**/v1/chat/completions") as request:
                    page.fill("#input", "are you hungry?")
                    page.press("#input", "Enter")
                sent = request.value.post_data_json
                assert sent["logprobs"] is True and sent["top_logprobs"] == 5
                page.wait_for_function("document.body.dataset.state === 'idle'")
                bubble = page.locator(".fish .bubble").last
                tokens = bubble.locator(".tok")
                assert tokens.count() >= 2
                assert "".join(tokens.all_text_contents()) == bubble.text_content()
                shades = {tokens.nth(i).evaluate("t => getComputedStyle(t).backgroundColor")
                          for i in range(tokens.count())}
                assert all(s.startswith("rgba(255, 127, 14") for s in shades), shades
                assert len(shades) > 1  # shaded by probability, not all alike
                tip = page.locator("#tip")
                assert not tip.is_visible()
                if touch:
                    tokens.nth(1).tap()
                else:
                    tokens.nth(1).hover()
                assert tip.is_visible()
                alternatives, topics = tip.locator("ol").nth(0), tip.locator("ol").nth(1)
                assert alternatives.locator("li").count() == 5
                assert alternatives.locator("li.chosen").count() <= 1
                names = topics.locator("li span:first-child").all_text_contents()
                assert sorted(names) == sorted(guppy.tok.topics.values())
                assert "%" in tip.text_content()
                page.screenshot(path=str(tmp_path / f"thinking-{width}.png"))
                if touch:
                    page.locator("header").tap()  # a tap elsewhere closes it
                else:
                    page.mouse.move(5, 5)
                assert not tip.is_visible()
                assert problems == []
                page.close()
        finally:
            browser.close()
