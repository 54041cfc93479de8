"""Seeding every random source a run uses."""

from __future__ import annotations

import random

import numpy as np
import torch


def set_random_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(base: int, index: int) -> int:
    """A distinct, reproducible seed for item ``index`` of a run seeded with ``base``."""
    return int(np.random.SeedSequence([base % 2**32, index]).generate_state(1)[0])
