"""Seeded random draws for the bad-input fuzz tests: one generator per test case, so a failing
case replays from its seed."""

from __future__ import annotations

import torch


def integer(gen: torch.Generator, lo: int, hi: int) -> int:
    """A random int in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def choice(gen: torch.Generator, *options):
    """One of the options, each as likely (repeat one to weight it)."""
    return options[integer(gen, 0, len(options) - 1)]
