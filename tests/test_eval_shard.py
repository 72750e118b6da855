"""Sharding partitions without padding; merging shard reports, and the refusals of a bad merge."""

import json

import numpy as np
import pytest

from videoconvmae.eval.merge import MergeError, merge_shards
from videoconvmae.eval.metrics import load_predictions
from videoconvmae.eval.report import write_report
from videoconvmae.eval.sharding import parse_shard, rank_part, shard_indices


@pytest.mark.parametrize("mode", ["contiguous", "strided"])
@pytest.mark.parametrize("num_items", [0, 1, 2, 7, 10, 31])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 8])
def test_parts_are_disjoint_and_cover_everything(mode, num_items, count):
    parts = [shard_indices(num_items, i, count, mode) for i in range(count)]
    flat = [p for part in parts for p in part]
    assert sorted(flat) == list(range(num_items))  # each item exactly once: no padded duplicates
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    if mode == "contiguous":
        assert flat == list(range(num_items))
    for world in (1, 2, 3):  # a job's part split over DDP ranks the same way
        sub = [rank_part(parts[0], r, world, mode) for r in range(world)]
        assert sorted(x for s in sub for x in s) == parts[0]


def test_parse_shard():
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError, match="eval.shard"):
            parse_shard(bad)


NAMES = [f"c{i}" for i in range(6)]


def _fake_eval(n=23, k=6, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"part{i % 3}/clip_{i // 3}" for i in range(n)]  # equal basenames (clip_0 x 3) in different folders
    return ids, rng.integers(0, k, n), rng.random((n, k)).astype(np.float32)


def _run(**over):
    run = {"mode": "video", "dataset": "k400", "protocol": "5x3", "checkpoint": "/a/ckpt.pt",
           "checkpoint_sha256": "abc", "config_hash": "h1", "num_total": 23, "shard_mode": "contiguous"}
    return {**run, **over}


def _write_shards(root, count, unreadable_pos=(4,), mode="contiguous", run=None):
    ids, labels, scores = _fake_eval()
    dirs = []
    for i in range(count):
        part = shard_indices(len(ids), i, count, mode)
        ok = [p for p in part if p not in unreadable_pos]
        bad = [{"video_id": ids[p], "path": f"/v/{ids[p]}.mp4", "error": "InvalidDataError: x"}
               for p in part if p in unreadable_pos]
        d = root / f"shard-{i}-of-{count}"
        write_report(d, video_ids=[ids[p] for p in ok], labels=labels[ok], scores=scores[ok], class_names=NAMES,
                     unreadable=bad, run=run or _run(shard_mode=mode), shard={"index": i, "count": count})
        dirs.append(d)
    return dirs


@pytest.mark.parametrize("mode", ["contiguous", "strided"])
def test_merge_equals_unsharded(tmp_path, mode):
    ids, labels, scores = _fake_eval()
    ok = [p for p in range(len(ids)) if p != 4]
    full = write_report(tmp_path / "full", video_ids=[ids[p] for p in ok], labels=labels[ok], scores=scores[ok],
                        class_names=NAMES, unreadable=[{"video_id": ids[4], "path": "x", "error": "e"}],
                        run=_run(shard_mode=mode), shard={"index": 0, "count": 1})
    merged = merge_shards(_write_shards(tmp_path, 3, mode=mode), tmp_path / "merged")
    for key in ("top1", "top5", "mean_class_acc", "num_evaluated", "num_unreadable", "num_assigned"):
        assert merged[key] == full[key], key
    m_ids, m_labels, m_scores = load_predictions(tmp_path / "merged" / "predictions.npz")
    by_id = {v: (y, s) for v, y, s in zip(m_ids, m_labels, m_scores)}
    assert len(by_id) == len(ok) and sum(v.endswith("/clip_0") for v in by_id) == 3  # keyed by id, not basename
    for p in ok:
        assert by_id[ids[p]][0] == labels[p] and np.array_equal(by_id[ids[p]][1], scores[p])
    assert (tmp_path / "merged" / "confusion.png").is_file()
    assert json.loads((tmp_path / "merged" / "metrics.json").read_text())["unreadable"][0]["video_id"] == ids[4]


def test_merge_refuses_missing_duplicated_or_mismatched_shards(tmp_path):
    dirs = _write_shards(tmp_path / "a", 3)
    with pytest.raises(MergeError, match="missing shard.*1/3"):
        merge_shards([dirs[0], dirs[2]], tmp_path / "m")
    with pytest.raises(MergeError, match="given twice"):
        merge_shards([dirs[0], dirs[1], dirs[1], dirs[2]], tmp_path / "m")
    other = _write_shards(tmp_path / "b", 3, run=_run(checkpoint_sha256="def"))
    with pytest.raises(MergeError, match="checkpoint_sha256"):
        merge_shards([dirs[0], other[1], dirs[2]], tmp_path / "m")
    other = _write_shards(tmp_path / "c", 3, run=_run(config_hash="h2"))
    with pytest.raises(MergeError, match="config_hash"):
        merge_shards([dirs[0], dirs[1], other[2]], tmp_path / "m")
    four = _write_shards(tmp_path / "d", 4)
    with pytest.raises(MergeError, match="not one of 3 shards|run.num_total|missing"):
        merge_shards([dirs[0], dirs[1], four[3]], tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        merge_shards([dirs[0], dirs[1], tmp_path / "nothing"], tmp_path / "m")


def test_merge_refuses_a_video_in_two_shards(tmp_path):
    dirs = _write_shards(tmp_path, 3)
    # shard 2 re-written with one of shard 1's videos: a wrong split must not be counted twice
    ids, labels, scores = _fake_eval()
    part = shard_indices(len(ids), 2, 3) + [shard_indices(len(ids), 1, 3)[0]]
    write_report(dirs[2], video_ids=[ids[p] for p in part], labels=labels[part], scores=scores[part],
                 class_names=NAMES, unreadable=[], run=_run(), shard={"index": 2, "count": 3})
    with pytest.raises(MergeError, match="also in"):
        merge_shards(dirs, tmp_path / "m")


def test_merge_refuses_an_out_folder_holding_a_shard(tmp_path):
    dirs = _write_shards(tmp_path, 3)
    before = (dirs[1] / "metrics.json").read_text()
    with pytest.raises(MergeError, match="that is a shard folder"):
        merge_shards(dirs, dirs[1])
    others = _write_shards(tmp_path / "other", 2)  # a shard of another evaluation
    with pytest.raises(MergeError, match="holds the report of a shard of 2"):
        merge_shards(dirs, others[0])
    assert (dirs[1] / "metrics.json").read_text() == before


def test_merge_names_a_corrupt_predictions_file(tmp_path):
    dirs = _write_shards(tmp_path, 3)
    npz = dirs[1] / "predictions.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    with pytest.raises(MergeError, match=r"shard-1-of-3/predictions.npz: cannot read the predictions"):
        merge_shards(dirs, tmp_path / "m")
