"""Cross-modality intensity augmentation: training samples whose intensities look like
another scanner's or another modality's, for federations whose hospitals each see one
modality (a CT-only and an MR-only hospital) or one scanner.

- ``RandGINd``: global intensity non-linear augmentation (GIN; Ouyang et al., "Causality-
  inspired single-source domain generalization for medical image segmentation", IEEE TMI
  2023): the image through a shallow convolutional network whose weights are drawn anew
  for every sample, mixed with the image, at the image's own energy. Shapes stay; the
  label is not touched.
- ``cross_modality``: GIN, then MONAI's random bias field, gamma contrast and histogram
  shift, each on a share of the samples.

Both follow MONAI's random state (``Compose.set_random_state``), so a run's samples are
drawn the same wherever it runs.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai import transforms as mt


class RandGINd(mt.RandomizableTransform, mt.MapTransform):
    """GIN on ``keys`` (each (C, *S), 2D or 3D) with probability ``prob``.

    A network of ``layers`` convolutions (``channels`` features between them, kernel sizes
    drawn from ``kernel_sizes``, weights and biases standard normal, leaky ReLU between),
    applied to each channel; the result mixed with the input by a weight drawn uniformly
    from [0, 1], then rescaled to the input's Frobenius norm.
    """

    def __init__(self, keys: Hashable | Sequence[Hashable], prob: float = 0.5, layers: int = 4,
                 channels: int = 2, kernel_sizes: Sequence[int] = (1, 3),
                 allow_missing_keys: bool = False) -> None:
        mt.MapTransform.__init__(self, keys, allow_missing_keys)
        mt.RandomizableTransform.__init__(self, prob)
        if any(size % 2 == 0 for size in kernel_sizes):
            raise ValueError(f"GIN kernel sizes must be odd (the image keeps its shape), "
                             f"got {tuple(kernel_sizes)}")
        self.layers, self.channels, self.kernel_sizes = layers, channels, tuple(kernel_sizes)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return out
        for key in self.key_iterator(out):
            out[key] = self.gin(torch.as_tensor(out[key], dtype=torch.float32))
        return out

    def gin(self, image: torch.Tensor) -> torch.Tensor:
        """One draw of the random network on ``image`` (C, *S), mixed and rescaled."""
        dims = image.ndim - 1
        conv = {2: F.conv2d, 3: F.conv3d}[dims]
        features = image[:, None]  # each channel its own sample: (C, 1, *S)
        width = 1
        for layer in range(self.layers):
            out = 1 if layer == self.layers - 1 else self.channels
            size = int(self.R.choice(self.kernel_sizes))
            weight = self._normal((out, width, *(size,) * dims))
            features = conv(features, weight, self._normal((out,)), padding=size // 2)
            if layer < self.layers - 1:
                features = F.leaky_relu(features, 0.2)
            width = out
        alpha = float(self.R.uniform())
        mixed = alpha * features[:, 0] + (1 - alpha) * image
        return mixed * (image.norm() / mixed.norm().clamp_min(1e-6))

    def _normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.as_tensor(self.R.standard_normal(shape), dtype=torch.float32)


def cross_modality(key: str = "image") -> list[mt.Transform]:
    """The cross-modality intensity steps on ``key``: GIN on half the samples, a bias field,
    gamma contrast and a histogram shift on a third each."""
    return [
        RandGINd(key, prob=0.5),
        mt.RandBiasFieldd(key, coeff_range=(0.0, 0.3), prob=1 / 3),
        mt.RandAdjustContrastd(key, gamma=(0.5, 2.0), prob=1 / 3),
        mt.RandHistogramShiftd(key, num_control_points=(5, 10), prob=1 / 3),
    ]

