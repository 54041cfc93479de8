"""Seeding every random source a run uses."""

from __future__ import annotations

import random

import numpy as np
import torch


def set_random_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(base: int, *index: int) -> int:
    """A distinct, reproducible seed for item ``index`` (one or more numbers) of a run seeded with ``base``.

    numpy's SeedSequence ignores trailing zeros ((base, 0, 0) gives the seed of (base, 0)): an index
    meant to be its own stream must end in a non-zero number."""
    return int(np.random.SeedSequence([base % 2**32, *index]).generate_state(1)[0])
