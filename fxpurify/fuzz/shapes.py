"""Tensor shapes the fuzzer draws from: small (every program runs in microseconds), with
size-1 dimensions (squeeze/unsqueeze/expand/broadcasting) and a few ranks."""
from __future__ import annotations

import random

SHAPES = [(6,), (4, 6), (5, 5), (3, 4, 5), (2, 3, 4), (4, 1, 3), (8,), (3, 3)]


def random_shape(rng: random.Random) -> tuple[int, ...]:
    return rng.choice(SHAPES)
