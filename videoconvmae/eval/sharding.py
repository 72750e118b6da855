"""Disjoint parts of the evaluation set for independent jobs (``eval.shard=i/n``) and for DDP ranks.

Every item belongs to exactly one part: no padding, so no video is counted twice (a DistributedSampler
pads the last ranks with repeats). A job's part is split again, the same way, over its DDP ranks.
"""

from __future__ import annotations


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise ValueError(f"eval.shard: expected i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"eval.shard: expected 0 <= i < n, got {text!r}")
    return i, n


def shard_indices(num_items: int, index: int, count: int, mode: str = "contiguous") -> list[int]:
    """Positions ``0..num_items-1`` of part ``index`` of ``count``.

    contiguous: block ``[floor(index * N / count), floor((index + 1) * N / count))``;
    strided: ``index, index + count, ...``. The parts are disjoint and cover every position once.
    """
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: expected 0 <= i < n")
    if mode == "strided":
        return list(range(index, num_items, count))
    if mode == "contiguous":
        return list(range(index * num_items // count, (index + 1) * num_items // count))
    raise ValueError(f"eval.shard_mode: expected contiguous|strided, got {mode!r}")


def rank_part(items: list, rank: int, world_size: int, mode: str = "contiguous") -> list:
    """The sub-part of a job's ``items`` that DDP rank ``rank`` evaluates."""
    return [items[j] for j in shard_indices(len(items), rank, world_size, mode)]
