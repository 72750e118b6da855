"""The transfer test's recipe over seeds x torch threads x loader workers: how robust is "pretraining transfers"?

    .venv/bin/python bench/transfer_grid.py --seeds 0 1 2 3 4 --threads 1 2 --workers 2 --jobs 2
    .venv/bin/python bench/transfer_grid.py --seeds 0 --threads 1 --workers 0 2     # workers must not matter
    .venv/bin/python bench/transfer_grid.py --seeds 0 1 2 --threads 2 --workers 2 --pretrain-epochs 60 \
        --finetune-epochs 60       # the demo's (the presets') full budgets

Each cell runs ``tests/test_engine_transfer.run_transfer`` in a fresh interpreter with ``OMP_NUM_THREADS`` /
``torch.set_num_threads`` set (1 and 2 threads reduce in other orders, the way another CPU's kernels do): one
pretrain_k400_tiny, then finetune_k400_tiny three times at the test's budgets, from the pretrained weights, from
``noise_like`` them (every tensor replaced by Gaussian noise of its own mean and std: the pretrain's scale without
its content) and from the default init; then ``probe_transfer``, a linear probe on ``videoconvmae features`` of
the frozen pretrained, initial (untrained) and noise encoders. The test compares the pretrained and random-init
finetunes; the noise arm is the sabotage control (column "noise passes?": would the test's bars accept it?).
Workers 0 and 2 must give the same numbers (the run is bitwise repeatable); the tool says so when they do not.
``--jobs 2`` runs two cells at once (1 thread each is then the fair setting).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CELL = """
import json, sys, torch
torch.set_num_threads({threads})
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.test_engine_transfer import probe_transfer, run_transfer
top1 = run_transfer(Path({data!r}), Path({work!r}), seed={seed}, num_workers={workers},
                    arms=("pretrained", "noise", "random"), **{budgets!r})
probe = probe_transfer(Path({data!r}), Path({work!r}), seed={seed}, num_workers={workers},
                       arms=("pretrained", "initial", "noise"))
print("CELL", json.dumps({{**top1, **{{"probe_" + k: v for k, v in probe.items()}}}}))
"""


def run_cell(data: Path, work: Path, seed: int, threads: int, workers: int, budgets: dict) -> dict:
    code = CELL.format(threads=threads, root=str(ROOT), data=str(data), work=str(work), seed=seed, workers=workers,
                       budgets=budgets)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    (work / "log.txt").write_text(proc.stdout + proc.stderr)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("CELL ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"cell seed={seed} threads={threads} workers={workers} failed: see {work / 'log.txt'}")
    return {"seed": seed, "threads": threads, "workers": workers, **json.loads(line[5:])}


def spread(values: list[float]) -> str:
    return f"{min(values):5.1f} / {statistics.median(values):5.1f} / {max(values):5.1f}"


def main() -> int:
    from tests.test_engine_transfer import MIN_MARGIN, MIN_PRETRAINED, transfer_holds, write_transfer_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="default: the test's (the demo: 60)")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="default: the test's (the demo: 60)")
    parser.add_argument("--out", default="runs/transfer_grid")
    args = parser.parse_args()

    out = Path(args.out)
    data = out / "synth"
    if not (data / "synth.json").is_file():
        write_transfer_data(data)
    budgets = {k: v for k, v in (("pretrain_epochs", args.pretrain_epochs), ("finetune_epochs", args.finetune_epochs))
               if v is not None}
    tag = "grid" + "".join(f"_{k[0]}{v}" for k, v in budgets.items())
    cells = [(s, t, w) for s in args.seeds for t in args.threads for w in args.workers]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda c: run_cell(data, out / f"{tag}_s{c[0]}_t{c[1]}_w{c[2]}", *c, budgets), cells))
    print(f"{'seed':>4} {'threads':>7} {'workers':>7} {'pretrained':>10} {'noise':>6} {'random':>7} {'margin':>7}"
          "  test  noise passes?")
    for r in rows:
        r["noise_passes"] = sabotaged = transfer_holds({"pretrained": r["noise"], "random": r["random"]})
        print(f"{r['seed']:>4} {r['threads']:>7} {r['workers']:>7} {r['pretrained']:>10.1f} {r['noise']:>6.1f} "
              f"{r['random']:>7.1f} {r['pretrained'] - r['random']:>7.1f}  {'pass' if transfer_holds(r) else 'FAIL'}"
              f"  {'YES' if sabotaged else 'no'}")
    print(f"min / median / max  pretrained {spread([r['pretrained'] for r in rows])}   "
          f"noise {spread([r['noise'] for r in rows])}   random {spread([r['random'] for r in rows])}   "
          f"margin {spread([r['pretrained'] - r['random'] for r in rows])}")
    for arm in ("pretrained", "initial", "noise"):
        print(f"linear probe on `features` ({arm} encoder): {spread([r['probe_' + arm] for r in rows])}")
    print(f"bars: pretrained >= {MIN_PRETRAINED:.1f}, margin >= {MIN_MARGIN:.1f}; "
          f"{sum(map(transfer_holds, rows))} of {len(rows)} cells pass; the noise control passes in "
          f"{sum(r['noise_passes'] for r in rows)}")
    by_run: dict[tuple, set] = {}
    for r in rows:
        by_run.setdefault((r["seed"], r["threads"]), set()).add((r["pretrained"], r["noise"], r["random"]))
    differing = [k for k, v in by_run.items() if len(v) > 1]
    print("workers 0 vs 2: identical in every (seed, threads) pair" if not differing else
          f"workers 0 vs 2 DIFFER for (seed, threads) {differing}")
    (out / f"{tag}.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
