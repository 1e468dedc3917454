"""Trying again after a lost commit race: the bronze engine's loads and the dbt steps wait by the same rule."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """How often work that lost a commit to a concurrent writer is tried again, and how long it waits in between.

    The wait before attempt n+1 is drawn uniformly from [0, min(max_delay, first_delay * 2**(n-1))] ("full
    jitter"), so loads that collided once do not collide again in lockstep."""

    attempts: int = 8
    first_delay: float = 0.2
    max_delay: float = 10.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy: attempts must be at least 1, not {self.attempts}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.max_delay, self.first_delay * 2 ** (attempt - 1)))
