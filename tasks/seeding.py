"""Seeding a run: called by the run, never at import."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch for one run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
