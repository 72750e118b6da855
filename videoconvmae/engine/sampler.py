"""A distributed sampler whose order is resumable state: a permutation fixed by (seed, epoch), sliced by rank.

``torch.utils.data.DistributedSampler`` cannot start mid-epoch, so a preempted job would either repeat or skip
data. Here ``state_dict() = {"epoch", "position"}`` and after ``load_state_dict`` the iteration continues
with exactly the index it would have produced next.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Indices of one rank; every rank gets ``len(dataset) // world_size`` (the tail is dropped when
    ``drop_last``, padded by wrapping around otherwise). ``position`` counts indices this rank already took."""

    def __init__(self, num_items: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = True) -> None:
        if num_items < world_size:
            raise ValueError(f"dataset has {num_items} items, fewer than the {world_size} processes")
        self.num_items, self.rank, self.world_size = num_items, rank, world_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        self.position = 0
        per_rank = num_items // world_size if drop_last else -(-num_items // world_size)
        self.num_per_rank = per_rank

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's full index list for ``epoch`` (independent of position)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.num_items, generator=g).tolist()
        else:
            order = list(range(self.num_items))
        total = self.num_per_rank * self.world_size
        order = (order * (1 + total // len(order)))[:total]  # wrap-around padding when not drop_last
        # Interleaved slices: the first micro-batches of all ranks together are the head of the permutation,
        # so N processes with batch B/N see the same global batches as one process with batch B.
        return order[self.rank:total:self.world_size]

    def set_epoch(self, epoch: int, position: int = 0) -> None:
        self.epoch, self.position = epoch, position

    def __iter__(self) -> Iterator[int]:
        yield from self.epoch_indices(self.epoch)[self.position:]

    def __len__(self) -> int:
        return self.num_per_rank - self.position

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(int(state["epoch"]), int(state["position"]))
