"""Randomness helpers: seeded generators, seeds derived from keys, draws, global RNG state.

Everything random in ssodkit draws from a ``torch.Generator`` it was handed, seeded from
the run seed and the position in the run (sample, view, iteration), so a result is
reproducible from its seed, a resumed run sees the draws an uninterrupted one would have
seen, and nothing disturbs the global RNG. Only the trainer's model init and dropout use
the global RNG; :func:`rng_state` / :func:`set_rng_state` save and restore it for resume.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

SEED_BITS = 63
"""Derived seeds are non-negative and fit a signed 64-bit integer."""


def low_bits(value: int, bits: int = SEED_BITS) -> int:
    """``value`` reduced to ``[0, 2**bits)``: a seed from arithmetic on keys stays in range."""
    return value & ((1 << bits) - 1)


def derive_seed(*keys: int, bits: int = SEED_BITS) -> int:
    """One seed from several integer keys (e.g. run seed, iteration, image ids).

    Python's tuple hash is deterministic for integers (``PYTHONHASHSEED`` only salts str and
    bytes), so the same keys give the same seed in every process and on every rank.
    """
    return low_bits(hash(keys), bits)


def seeded_generator(seed: int, *, bits: int | None = None) -> torch.Generator:
    """A fresh CPU generator seeded with ``seed`` (reduced to ``bits`` bits when given).

    ``bits=None`` hands the seed to torch as it is, so a negative run seed keeps torch's
    own mapping.
    """
    return torch.Generator().manual_seed(seed if bits is None else low_bits(seed, bits))


# --- draws: one scalar at a time, on the generator's device --------------------------------


def uniform(g: torch.Generator, low: float, high: float) -> float:
    """Uniform float in ``[low, high)``, drawn in float64."""
    u = torch.rand((), generator=g, device=g.device, dtype=torch.float64)
    return low + (high - low) * float(u)


def randint(g: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in ``[low, high]`` (both ends included)."""
    return int(torch.randint(low, high + 1, (), generator=g, device=g.device))


def coin(g: torch.Generator, p: float) -> bool:
    """True with probability ``p``."""
    return uniform(g, 0.0, 1.0) < p


# --- the global RNGs (checkpoints) ---------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """State of Python's, NumPy's, torch's and (when present) CUDA's global RNGs."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (CUDA only where both sides have it)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
