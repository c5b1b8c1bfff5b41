"""What the machine can do, and the defaults that follow from it.

`guppy run` trains the small model on a CPU and the seed's size (guppy-9m) on a GPU, each in
the number format the hardware is fast at:

    CUDA, compute capability 8.0 and up (A100, L4, H100): bf16 autocast. bf16 has fp32's
        range, so it needs no loss scaling.
    CUDA 7.x (the T4 of free Colab, V100): fp16 autocast with a GradScaler. These GPUs have
        fp16 tensor cores but no fast bf16 (it runs emulated, slower than fp32).
    older CUDA, Apple MPS, CPU: fp32. A CPU without bf16 matrix units runs bf16 matmuls about
        50x slower than fp32 (docs/benchmarks.md); MPS autocast support varies by release.

Everything here but `detect` is a pure function of an `Accelerator`, so the choices are
tested without the hardware.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("cpu", "cuda", "mps")


@dataclass(frozen=True)
class Accelerator:
    """A device as far as the defaults care."""

    kind: str  # one of KINDS
    capability: tuple[int, int] = (0, 0)  # CUDA compute capability (major, minor)
    memory_gib: float = 0.0  # CUDA memory
    name: str = ""


def amp_dtype(acc: Accelerator) -> str:
    """The number format `--dtype auto` trains in: bf16, fp16 or fp32."""
    if acc.kind != "cuda":
        return "fp32"
    if acc.capability >= (8, 0):
        return "bf16"
    if acc.capability >= (7, 0):
        return "fp16"
    return "fp32"  # Pascal and older: no tensor cores, fp16 gains little


def batch_tokens_for(acc: Accelerator) -> int:
    """Tokens per step for guppy-9m on a GPU: large enough to keep it busy (a step of a small
    model is mostly fixed cost), small enough that an epoch of the default data (about 2.4M
    tokens) still gives a hundred steps or more, and well inside the memory (about 1 GiB of
    activations per 8K tokens in fp32 for guppy-9m)."""
    if acc.memory_gib >= 40:
        return 32_768
    if acc.memory_gib >= 12:
        return 16_384
    return 8_192


def detect(device: str = "auto") -> Accelerator:
    """The accelerator `device` names ("auto": the one training would pick)."""
    import torch

    from guppylm.errors import ConfigError

    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    try:
        d = torch.device(device)
    except RuntimeError:
        raise ConfigError("TrainConfig", "device", device,
                          "unknown device; use auto, cpu, cuda or mps") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("TrainConfig", "device", device,
                              "no CUDA GPU is available here; use auto or cpu")
        props = torch.cuda.get_device_properties(d)
        return Accelerator("cuda", (props.major, props.minor), props.total_memory / 2**30,
                           props.name)
    return Accelerator(d.type if d.type in KINDS else "cpu")
