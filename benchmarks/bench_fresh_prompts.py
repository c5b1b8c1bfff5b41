"""A second, fresh persona test: how well do the persona-test figures carry over?

    python benchmarks/bench_fresh_prompts.py runs/guppy [--test benchmarks/guppy.fresh.test.toml]

`guppy eval` reports the persona test that ships beside the persona; the default `guppy run`
configuration was chosen by measuring on it, so its pass rate is somewhat optimistic for
prompts nobody has tuned against. The prompts here were written by a helper that saw neither
that test nor any model output, after the tuning was done. They are scored exactly like
the persona test (`guppylm.evaluate.run_persona_test`, 3 seeds a prompt).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from guppylm import persona as persona_mod
from guppylm.chat import Guppy
from guppylm.errors import GuppyError
from guppylm.evaluate import load_persona_test, rate, rate_by, run_persona_test

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--test", type=Path, default=HERE / "guppy.fresh.test.toml")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    try:
        guppy = Guppy.load(args.run)
        persona = persona_mod.load(str(args.run / "persona.toml"))
        test = load_persona_test(args.test, persona)
    except GuppyError as e:
        sys.exit(f"bench_fresh_prompts: error: {e}")
    rows = run_persona_test(guppy, test, persona)  # single prompts; no conversations
    print(f"{args.run}: {len(test.prompts)} fresh prompts x 3 seeds ({args.test.name})")
    for label, key in (("pass", "passed"), ("in character", "in_character"),
                       ("on topic", "on_topic"), ("topic named right", "routed")):
        print(f"  {label:<18} {rate(rows, key):.1%}")
    print("  by style: " + ", ".join(f"{style} {share:.0%}"
                                     for style, share in rate_by(rows, "style").items()))


if __name__ == "__main__":
    main()
