"""Network scores for a whole prepared image: slice by slice (2D) or sliding window (3D)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import nn

from tasks.device import autocast

# Slices per network call (2D networks on volumes); windows per call and their overlap (3D).
SLICE_BATCH = 32
WINDOW_BATCH = 4
WINDOW_OVERLAP = 0.25


def _pad(x: torch.Tensor, minimum: list[int], multiple: int) -> tuple[torch.Tensor, list[slice]]:
    """Pad the spatial dims of (B, C, *S) symmetrically, as training does, to at least
    ``minimum`` and a multiple of ``multiple``; return the padded tensor and the crop back."""
    spatial = x.shape[2:]
    targets = [max(n, m) for n, m in zip(spatial, minimum, strict=True)]
    targets = [t + (-t) % multiple for t in targets]
    before = [(t - n) // 2 for t, n in zip(targets, spatial, strict=True)]
    pad = []
    for n, t, b in reversed(list(zip(spatial, targets, before, strict=True))):
        pad += [b, t - n - b]
    crop = [slice(b, b + n) for b, n in zip(before, spatial, strict=True)]
    return F.pad(x, pad), crop


@torch.no_grad()
def score_image(model: nn.Module, image: torch.Tensor, spatial_dims: int, divisor: int,
                patch: list[int], device: torch.device, batch: int = SLICE_BATCH) -> torch.Tensor:
    """Softmax scores (C, *S) for a prepared image (1, *S); S is (X, Y, Z) or (U, V)."""
    model.eval()
    with autocast(device):
        if spatial_dims == 3:
            x, crop = _pad(image[None].to(device), patch, divisor)
            logits = sliding_window_inference(x, tuple(patch), WINDOW_BATCH, model,
                                                overlap=WINDOW_OVERLAP)
            return torch.softmax(logits[0].float(), 0)[(slice(None), *crop)].cpu()
        if image.ndim == 3:  # a radiograph: one slice
            x, crop = _pad(image[None].to(device), patch, divisor)
            return torch.softmax(model(x)[0].float(), 0)[(slice(None), *crop)].cpu()
        slices = image.permute(3, 0, 1, 2)  # (Z, 1, X, Y)
        scores = []
        for start in range(0, slices.shape[0], batch):
            x, crop = _pad(slices[start:start + batch].to(device), patch, divisor)
            scores.append(torch.softmax(model(x).float(), 1)[(slice(None), slice(None), *crop)])
        return torch.cat(scores).permute(1, 2, 3, 0).cpu()
