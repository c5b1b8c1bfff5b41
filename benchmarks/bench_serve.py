"""How `guppy serve` holds up under concurrent streaming clients.

    python benchmarks/bench_serve.py runs/guppy [--clients 1 8 32] [--seconds 5]
                                                [--max-tokens 64] [--max-batch 32]

Starts the server on the run folder in a subprocess (127.0.0.1, a free port), then for each
number of clients C: C clients at once, each streaming replies one after another (varied
prompts, a seed each) for `--seconds`, then finishing the reply it is in. Prints, per C:
total generated tokens per second, time to first token (to the first text a person sees,
p50/p95), time per token after it (p50/p95 over replies: (end - first token) / (tokens - 1),
as vLLM measures it), errors, the server's CPU time per generated token (a figure that holds
even when other programs share the cores), and the load average. Goal: at 32 clients, 8x
the tokens/s of one client, no errors, and p95 time to first token under 0.5 s.

The clients run in this process and share the machine's cores with the server, as on a
laptop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from machine import cpu_name  # benchmarks/machine.py

PROMPTS = ["hi guppy", "are you hungry?", "how is the water today?", "tell me a joke",
           "what do you think about cats?", "i failed my exam today", "do you like music?",
           "what is the meaning of life?", "good morning!", "is it cold in your tank?"]



@dataclass
class Result:
    ttft: float | None = None  # seconds to the first text
    per_token: float | None = None  # seconds per token after the first
    tokens: int = 0
    error: str | None = None


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far; None where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int, max_batch: int, max_waiting: int) -> subprocess.Popen:
    code = ("import sys; from guppylm.serve import serve; "
            "serve(sys.argv[1], port=int(sys.argv[2]), max_batch=int(sys.argv[3]), "
            "max_waiting=int(sys.argv[4]))")
    server = subprocess.Popen([sys.executable, "-c", code, str(run), str(port), str(max_batch),
                               str(max_waiting)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"bench_serve: the server exited ({server.returncode}); see above")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.terminate()
    sys.exit("bench_serve: the server did not start within 60 s")


async def one_reply(http: httpx.AsyncClient, prompt: str, seed: int, max_tokens: int) -> Result:
    body = {"model": "guppy", "messages": [{"role": "user", "content": prompt}], "seed": seed,
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    result, first_token, done = Result(), None, False
    start = time.perf_counter()
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return Result(error=f"HTTP {r.status_code}")
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                event = json.loads(line[6:])
                if "error" in event:
                    return Result(error=event["error"]["message"])
                if event.get("usage"):
                    result.tokens = event["usage"]["completion_tokens"]
                delta = event["choices"][0]["delta"] if event["choices"] else {}
                if first_token is None and (delta.get("topic") or delta.get("content")):
                    first_token = time.perf_counter()
                if result.ttft is None and delta.get("content"):
                    result.ttft = time.perf_counter() - start
    except httpx.HTTPError as e:
        return Result(error=type(e).__name__)
    end = time.perf_counter()
    if not done:
        return Result(error="no [DONE]")
    if first_token is not None and result.tokens > 1:
        result.per_token = (end - first_token) / (result.tokens - 1)
    return result


async def level(url: str, clients: int, seconds: float, max_tokens: int) -> tuple[float, list]:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
        async def client(c: int) -> list[Result]:
            out, i = [], 0
            while time.perf_counter() < start + seconds:
                seed = c * 100_000 + i
                out.append(await one_reply(http, PROMPTS[seed % len(PROMPTS)], seed, max_tokens))
                i += 1
            return out

        await one_reply(http, "hi", 0, 8)  # warm up: connections, first-call costs
        start = time.perf_counter()
        results = await asyncio.gather(*(client(c) for c in range(clients)))
        wall = time.perf_counter() - start
    return wall, [r for rs in results for r in rs]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder, e.g. runs/guppy")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="how long each number of clients keeps asking")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=32)
    args = parser.parse_args()
    if not (args.run / "model.safetensors").is_file():
        sys.exit(f"bench_serve: {args.run}: not a run folder (no model.safetensors); train one "
                 "with `guppy run`")
    config = json.loads((args.run / "config.json").read_text())
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores); python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.1f} before starting")
    print(f"model: {args.run} ({config.get('train', {}).get('preset', '?')}, "
          f"{config['model']['n_layer']} layers x {config['model']['d_model']}, "
          f"vocab {config['model']['vocab_size']}); {args.seconds:g} s per level, "
          f"max_tokens {args.max_tokens}, max_batch {args.max_batch}")
    port = free_port()
    server = start_server(args.run, port, args.max_batch, max(64, max(args.clients)))
    rows = []
    try:
        for clients in args.clients:
            cpu_before = cpu_seconds(server.pid)
            wall, results = asyncio.run(level(f"http://127.0.0.1:{port}", clients,
                                              args.seconds, args.max_tokens))
            cpu_after, load = cpu_seconds(server.pid), os.getloadavg()[0]
            ok = [r for r in results if r.error is None]
            errors = sorted({r.error for r in results if r.error})
            ttft = [r.ttft for r in ok if r.ttft is not None]
            tpot = [r.per_token for r in ok if r.per_token is not None]
            tokens = sum(r.tokens for r in ok)
            cpu = (cpu_after - cpu_before) / tokens if cpu_before is not None and tokens else None
            rows.append((clients, tokens / wall, ttft, tpot, len(results) - len(ok), errors,
                         (cpu, load), len(results)))
    finally:
        server.terminate()
        server.wait(10)
    print()
    print(f"{'clients':>7} {'tokens/s':>9} {'x one':>6} {'TTFT p50':>9} {'p95':>7} "
          f"{'per-token p50':>14} {'p95':>7} {'replies':>7} {'errors':>6} "
          f"{'CPU/token':>9} {'load':>5}")
    base = rows[0][1] if rows and rows[0][0] == 1 else None
    for clients, tps, ttft, tpot, n_errors, _, (cpu, load), replies in rows:
        speedup = f"{tps / base:5.1f}x" if base else "     -"
        print(f"{clients:>7} {tps:>9.0f} {speedup:>6} {pct(ttft, 50) * 1e3:>7.0f}ms "
              f"{pct(ttft, 95) * 1e3:>5.0f}ms {pct(tpot, 50) * 1e3:>12.1f}ms "
              f"{pct(tpot, 95) * 1e3:>5.1f}ms {replies:>7} {n_errors:>6} "
              + (f"{cpu * 1e3:>7.2f}ms" if cpu is not None else f"{'-':>9}") + f" {load:>5.1f}")
    for clients, *_, errors, _, _ in rows:
        if errors:
            print(f"errors at {clients} clients: {', '.join(errors)}")
    top = next((r for r in rows if r[0] == 32), None)
    if top and base:
        checks = [(f"tokens/s at 32 clients >= 8x one client's ({top[1] / base:.1f}x)",
                   top[1] >= 8 * base),
                  (f"0 errors ({top[4]})", top[4] == 0),
                  (f"p95 time to first token < 0.5 s ({pct(top[2], 95):.3f} s)",
                   pct(top[2], 95) < 0.5)]
        print()
        for what, met in checks:
            print(f"goal: {what}: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
