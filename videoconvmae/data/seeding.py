"""Per-item randomness: every training item draws its augmentation from RNG streams seeded by (seed, epoch, index).

Why: worker processes draw augmentations from per-worker RNG streams, so which item gets which random crop
depends on the worker count and on where the iterator started. Seeding per item makes a resumed mid-epoch run
(and any ``num_workers``) produce exactly the same batches.

The transforms draw from the global streams (Python's ``random``, numpy's, torch's; timm's RandAugment too), so
an item's streams are swapped in while it runs (``ItemStreams.scope``). In one batched fetch item k+1 starts
decoding while item k is augmented; each continues on its own streams: the draws of an item fetched alone.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _states() -> tuple:
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _set_states(states: tuple) -> None:
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])


class ItemStreams:
    """Global RNG streams per seed; ``scope(k)`` makes item k's the global ones, then puts the caller's back."""

    def __init__(self, seeds: Sequence[int]) -> None:
        self.seeds, self._states = list(seeds), [None] * len(seeds)

    @contextlib.contextmanager
    def scope(self, k: int) -> Iterator[None]:
        caller = _states()
        if self._states[k] is None:
            seed_everything(self.seeds[k])
        else:
            _set_states(self._states[k])
        try:
            yield
        finally:
            self._states[k] = _states()
            _set_states(caller)


def isolated_rng(seed: int) -> contextlib.AbstractContextManager[None]:
    """Seed python / numpy / torch for one piece of work, then put the caller's RNG states back."""
    return ItemStreams([seed]).scope(0)


class SeededItems(Dataset):
    """``dataset`` with each item's RNG seeded by (seed, epoch, index); the loop sets ``epoch``. A batch goes to
    the dataset's batched fetch ``__getitems__(indices, streams=)`` where it has one (``ClipDataset``: one batch
    tensor, decode overlapped with augmentation, zero-copy collate), else item by item."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def key(self, index: int) -> int:
        return ((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(index)) % (2**63 - 1)

    def __getitem__(self, index: int) -> Any:
        with isolated_rng(self.key(index)):
            return self.dataset[index]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        fetch = getattr(self.dataset, "__getitems__", None)
        if fetch is None:
            return [self[i] for i in indices]
        return fetch(indices, streams=ItemStreams([self.key(i) for i in indices]))

    def row_seeds(self, index: torch.Tensor) -> torch.Tensor:
        """long [B]: a seed per batch row from (seed, epoch, item, repeat slot) for randomness drawn on the
        device (pretraining masks), so it does not depend on the number of processes or the batch split.
        ``index`` [B] holds each row's item; the R repeated-augmentation rows of an item get slots 0..R-1."""
        seen: dict[int, int] = {}
        seeds = []
        for i in index.tolist():
            slot = seen.get(i, 0)
            seen[i] = slot + 1
            seeds.append((self.key(i) * 31 + slot + 1) % (2**63 - 1))
        return torch.tensor(seeds, dtype=torch.long)
