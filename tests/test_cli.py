"""The command line: what each command loads, and how config errors read there."""

import subprocess
import sys

import pytest

from conftest import run_cli

# Runs `guppy ARGS` in a fresh interpreter, then says whether torch was imported.
PROBE = """
import sys
from guppylm.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("exit", code, "torch", "torch" in sys.modules)
"""


@pytest.mark.parametrize("args", [
    ["--help"],
    ["train", "--help"],
    ["persona", "check", "guppy"],
    ["data", "--n", "60", "--out", "{tmp}/data"],
    ["data", "stats", "{tmp}/data"],
])
def test_commands_that_need_no_model_do_not_import_torch(args, tmp_path):
    if args[0] == "data" and args[1] == "stats":  # stats of data made first
        run_args = ["data", "--n", "60", "--out", str(tmp_path / "data")]
        subprocess.run([sys.executable, "-m", "guppylm", *run_args], check=True,
                       capture_output=True)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                       timeout=60)
    assert r.stdout.splitlines()[-1] == "exit 0 torch False", r.stderr[-2000:]


def test_run_defaults_come_from_the_run_preset():
    from guppylm.pipeline import RUN_PRESET, run_config
    from guppylm.train_config import TrainConfig

    cfg = run_config()
    assert {k: getattr(cfg, k) for k in RUN_PRESET} == RUN_PRESET
    assert cfg.warmup == TrainConfig.warmup  # the rest are TrainConfig's defaults
    planned_in_steps = run_config(steps=10)
    assert planned_in_steps.minutes is None and planned_in_steps.steps == 10


def test_a_data_config_error_names_the_flag(capsys, tmp_path):
    code, _, err = run_cli(capsys, "data", "--n", "2", "--out", tmp_path / "data")
    assert code == 2 and err == "guppy: error: --n 2: too few conversations; ask for at least 3\n"
    assert not (tmp_path / "data").exists()
