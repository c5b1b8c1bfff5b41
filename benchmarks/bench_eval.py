"""How long `guppy eval` takes, and what decoding its replies together saves.

    python benchmarks/bench_eval.py runs/guppy [--prompts 60]

Side by side in one process, on the first `--prompts` prompts of the run's persona test at
eval's seeds: the replies one by one (`Guppy.respond`, as eval used to) and together
(`evaluate.respond_together`, batched decoding). Checks they are the same replies, and prints
both times, their ratio and the CPU time of each (a figure that holds when other programs
share the cores). Then times a whole `evaluate_run`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from machine import cpu_name  # noqa: E402

from guppylm import persona as persona_mod  # noqa: E402
from guppylm.chat import Guppy  # noqa: E402
from guppylm.evaluate import (  # noqa: E402
    SEEDS,
    evaluate_run,
    load_persona_test,
    persona_test_path,
    respond_together,
)


def timed(fn):
    """(result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--prompts", type=int, default=60)
    args = ap.parse_args()
    persona = persona_mod.load(str(args.run / "persona.toml"))
    test = load_persona_test(persona_test_path(args.run / "persona.toml"), persona)
    guppy = Guppy.load(args.run)
    requests = [([{"role": "user", "content": p.text}], seed)
                for p in test.prompts[: args.prompts] for seed in SEEDS]

    alone, wall_a, cpu_a = timed(lambda: [guppy.respond(m, seed=s) for m, s in requests])
    together, wall_t, cpu_t = timed(lambda: respond_together(guppy, requests))
    assert together == alone, "batched decoding changed a reply"
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{len(requests)} replies ({args.prompts} prompts x {len(SEEDS)} seeds), the same "
          f"replies both ways")
    print(f"  one by one: {wall_a:6.1f} s wall, {cpu_a:6.1f} s CPU")
    print(f"  together:   {wall_t:6.1f} s wall, {cpu_t:6.1f} s CPU   "
          f"({wall_a / wall_t:.1f}x faster, {cpu_a / cpu_t:.1f}x less CPU)")
    _, wall_e, cpu_e = timed(lambda: evaluate_run(args.run, quiet=True))
    print(f"whole `guppy eval`: {wall_e:.1f} s wall, {cpu_e:.1f} s CPU")


if __name__ == "__main__":
    main()
