"""Device choice and mixed precision: CUDA when present, then Apple's MPS, else the CPU.

Mixed precision is used on CUDA only: bfloat16 where the card computes it (Ampere and
newer), else float16 with a gradient scaler (fp16's narrow range underflows small
gradients without one). Under DP-SGD a float16-only card trains in full precision:
Opacus clips each sample's gradient of the loss as computed, and a scaled loss would
scale the clipping bound with it. MPS and the CPU train in full precision.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from tasks.errors import UserError

DEVICES = "auto, cpu, cuda, cuda:N or mps"


def select_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, else MPS, else the CPU; 'cpu', 'cuda[:N]' and 'mps' are taken as
    asked (UserError when that device is absent)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if problem := device_problem(name):
        raise UserError(f"device '{name}': {problem}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' was asked for but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' was asked for but this machine has no usable MPS "
                        "device (Apple silicon with a torch built for it)")
    return torch.device(name)


def device_problem(name: str) -> str | None:
    """What is wrong with a device name in a config (None: nothing), without looking for
    the device itself (the config may be read on another machine)."""
    if name in ("auto", "cpu", "mps", "cuda"):
        return None
    if name.startswith("cuda:") and name[5:].isdigit():
        return None
    return f"must be {DEVICES}"


@dataclass(frozen=True)
class Precision:
    """How a device computes a forward pass: under autocast to ``dtype`` (None: full
    precision); float16 scales the loss (``scaler``)."""

    device_type: str
    dtype: torch.dtype | None = None

    @property
    def scaled(self) -> bool:
        """Whether the loss is scaled before backward (float16)."""
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context of a forward pass: autocast to ``dtype``, or none."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled for float16 only (disabled, it passes all through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.scaled)


def cuda_dtype(bf16: bool, private: bool) -> torch.dtype | None:
    """The autocast dtype on a CUDA card: bfloat16 where it computes it (``bf16``), else
    float16, but none under DP (``private``: the scaled loss would scale the clipping)."""
    if bf16:
        return torch.bfloat16
    return None if private else torch.float16


def precision_for(device: torch.device, private: bool = False) -> Precision:
    """The precision to train (``private``: under DP-SGD) or predict with on ``device``:
    bfloat16 on a card of compute capability 8.0 (Ampere) or newer, which computes it
    natively (torch would emulate it on older cards, slowly)."""
    if device.type != "cuda":
        return Precision(device.type)
    native_bf16 = torch.cuda.get_device_capability(device) >= (8, 0)
    return Precision("cuda", cuda_dtype(native_bf16, private))


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The context of an inference pass on ``device`` (mixed precision on CUDA)."""
    return precision_for(device).autocast()
