import pytest

from guppylm.devices import Accelerator, amp_dtype, batch_tokens_for, detect

T4 = Accelerator("cuda", (7, 5), 15.0, "Tesla T4")
V100 = Accelerator("cuda", (7, 0), 16.0, "Tesla V100")
A100 = Accelerator("cuda", (8, 0), 40.0, "A100")
L4 = Accelerator("cuda", (8, 9), 22.0, "NVIDIA L4")
H200 = Accelerator("cuda", (9, 0), 139.8, "NVIDIA H200")
P100 = Accelerator("cuda", (6, 0), 16.0, "Tesla P100")


@pytest.mark.parametrize("acc, dtype", [
    (H200, "bf16"), (A100, "bf16"), (L4, "bf16"),  # bf16 tensor cores
    (T4, "fp16"), (V100, "fp16"),  # fp16 tensor cores only: fp16 with a GradScaler
    (P100, "fp32"), (Accelerator("cpu"), "fp32"), (Accelerator("mps"), "fp32"),
])
def test_the_number_format_follows_the_hardware(acc, dtype):
    assert amp_dtype(acc) == dtype


def test_batches_grow_with_the_gpu_memory():
    sizes = [batch_tokens_for(a) for a in (Accelerator("cuda", (7, 5), 8.0), T4, A100, H200)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert batch_tokens_for(T4) == 16_384 and batch_tokens_for(H200) == 32_768


def test_detect_names_this_machine_and_a_given_cpu():
    assert detect("cpu") == Accelerator("cpu")
    assert detect("auto").kind in ("cpu", "cuda", "mps")


def test_guppy_run_trains_the_seed_size_on_a_gpu_and_the_small_model_on_a_cpu():
    from guppylm.pipeline import GPU_RUN_PRESET, RUN_PRESET, run_config

    cpu = run_config(Accelerator("cpu"))
    assert (cpu.preset, cpu.batch_tokens, cpu.minutes) == (
        RUN_PRESET["preset"], RUN_PRESET["batch_tokens"], RUN_PRESET["minutes"])
    t4, h200 = run_config(T4), run_config(H200)
    assert t4.preset == h200.preset == "guppy-9m" == GPU_RUN_PRESET["preset"]
    assert (t4.batch_tokens, h200.batch_tokens) == (16_384, 32_768)
    assert t4.dtype == "auto"  # which autocast_dtype turns into fp16 there, bf16 on the H200
    mps = run_config(Accelerator("mps"))
    assert mps.preset not in ("guppy-9m", RUN_PRESET["preset"])
    # what the user says still wins
    mine = run_config(H200, preset="guppy-2m", minutes=1.0, dtype="fp32", batch_tokens=4096)
    assert (mine.preset, mine.minutes, mine.dtype, mine.batch_tokens) == (
        "guppy-2m", 1.0, "fp32", 4096)


def test_a_device_that_is_not_there_is_a_config_error():
    import torch

    from guppylm.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown device"):
        detect("tpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            detect("cuda")


def test_auto_dtype_on_this_cpu_is_fp32():
    import torch

    from guppylm.train import autocast_dtype

    assert autocast_dtype(torch.device("cpu"), "auto") is None
    assert autocast_dtype(torch.device("cpu"), "fp16") is torch.float16
