"""Generating with ONNX Runtime: the loop every runtime runs around an exported decoder.

    session = load_session(Path("out/guppy-onnx/onnx/model.onnx"))
    for token in generate(session, prompt_ids, SamplingConfig(temperature=0), stop_ids=(0,)):
        ...

The prompt goes in once with an empty cache; after that, each step feeds one token, its
position, the attention mask of everything so far, and the keys and values the previous
step handed out (onnx.py describes the inputs). Sampling mirrors generate.py's `pick_token`
in NumPy: temperature, top-k, top-p. Unlike `Guppy.stream` it has no rule for the topic
token: it samples it like any other, as other runtimes do.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from guppylm.generate import SamplingConfig


def load_session(path: Path, threads: int | None = None):
    """An ONNX Runtime session on the CPU (`threads`: intra-op threads; None: all cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def empty_cache(session) -> dict[str, np.ndarray]:
    """Past keys and values of length 0, shaped as the graph declares them."""
    feed = {}
    for spec in session.get_inputs():
        if spec.name.startswith("past_key_values."):
            _, heads, _, head_size = spec.shape
            feed[spec.name] = np.zeros((1, heads, 0, head_size), dtype=np.float32)
    return feed


def pick(logits: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator) -> int:
    """generate.py's `pick_token`, in NumPy."""
    if cfg.temperature <= 0:
        return int(logits.argmax())
    logits = logits.astype(np.float64) / cfg.temperature
    if cfg.top_k > 0:
        kth = np.sort(logits)[-min(cfg.top_k, logits.size)]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if cfg.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        sorted_probs = probs[order]
        drop = np.cumsum(sorted_probs) - sorted_probs > cfg.top_p
        probs[order[drop]] = 0.0
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


def generate(session, prompt_ids: list[int], cfg: SamplingConfig, stop_ids=(),
             context: int | None = None) -> Iterator[int]:
    """Yield new token ids; stop at a stop id (not yielded), `cfg.max_new_tokens`, or the
    end of the `context`."""
    rng = np.random.default_rng(cfg.seed)
    n = len(prompt_ids)
    limit = cfg.max_new_tokens if context is None else min(cfg.max_new_tokens, context - n)
    outputs = [o.name for o in session.get_outputs()]
    feed = {"input_ids": np.array([prompt_ids], dtype=np.int64),
            "attention_mask": np.ones((1, n), dtype=np.int64),
            "position_ids": np.arange(n, dtype=np.int64)[None], **empty_cache(session)}
    for i in range(limit):
        logits, *presents = session.run(outputs, feed)
        token = pick(logits[0, -1], cfg, rng)
        if token in stop_ids:
            return
        yield token
        if i + 1 == limit:
            return
        feed = {"input_ids": np.array([[token]], dtype=np.int64),
                "attention_mask": np.ones((1, n + 1), dtype=np.int64),
                "position_ids": np.array([[n]], dtype=np.int64)}
        for name, value in zip(outputs[1:], presents, strict=True):
            feed[name.replace("present.", "past_key_values.")] = value
        n += 1
