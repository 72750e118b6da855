"""The transfer test's recipe over seeds x torch threads x loader workers: does the pretrain learn features?

    .venv/bin/python bench/transfer_grid.py --seeds 0 1 2 3 4 --threads 1 2 --workers 2 --jobs 2
    .venv/bin/python bench/transfer_grid.py --seeds 0 --threads 1 --workers 0 2     # workers must not matter
    .venv/bin/python bench/transfer_grid.py --seeds 0 1 --threads 1 --finetune      # + the finetune arms
    .venv/bin/python bench/transfer_grid.py --seeds 4 --threads 1 --noise-seeds 1 2 3   # + three more noise draws

Each cell runs ``tests/test_engine_transfer`` in a fresh interpreter with ``OMP_NUM_THREADS`` /
``torch.set_num_threads`` set (1 and 2 threads reduce in other orders, the way another CPU's kernels do): its
``pretrain`` (pretrain_k400_tiny with the test's decoder and budget), then ``probe_transfer``, a linear probe on
``videoconvmae features`` of three frozen encoders: the pretrained one, the same encoder untrained (``initial``)
and ``noise`` (every pretrained tensor replaced by Gaussian noise of its own mean and std: the pretrain's scale
without its content). The test's bars are ``probe_holds``. With ``--finetune`` each cell also runs
finetune_k400_tiny from the pretrained weights, from the noise and from the default init (``run_transfer``).
Workers 0 and 2 must give the same numbers and the same pretrained weights (a digest of every tensor: the run is
bitwise repeatable); the tool says so when they do not.
``--jobs 2`` runs two cells at once (1 thread each is then the fair setting). ``--sabotage leak`` pretrains with
masking that leaks (the dense masked convolution without its keep-multiplication): measured, it passes the
test's bars (README), so leaks are left to the exact leak tests.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cells import run_cell_code, spread  # noqa: E402

CELL = """
import json, sys, torch
torch.set_num_threads({threads})
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.test_engine_transfer import noise_like, pretrain, probe_encoder, probe_transfer, run_transfer
from bench.cells import weights_digest
data, work = Path({data!r}), Path({work!r})
extra = ()
if {sabotage!r} == "leak":  # the dense masked convolution without its keep-multiplication: hidden cells leak
    from videoconvmae.models import layers
    layers.apply_keep = lambda y, keep: y
    extra = ("model.sparse_stages=false",)
pretrain(data, work, seed={seed}, num_workers={workers}, extra=extra, **{budgets!r})
row = {{"probe_" + k: v for k, v in probe_transfer(data, work, seed={seed}, num_workers={workers},
                                                   arms=("pretrained", "initial", "noise")).items()}}
row["weights_sha256"] = weights_digest(work / "pretrain" / "weights.pt")
for noise_seed in {noise_seeds!r}:  # more noise draws: how much of the noise arm is its one draw
    weights = noise_like(work / "pretrain" / "weights.pt", work / f"noise_{{noise_seed}}.pt", seed=noise_seed)
    row[f"probe_noise_{{noise_seed}}"] = probe_encoder(data, work, weights, f"noise_{{noise_seed}}", {workers})
if {finetune!r}:
    row.update(run_transfer(data, work, seed={seed}, num_workers={workers}, arms=("pretrained", "noise", "random")))
print("CELL", json.dumps(row))
"""


def run_cell(data: Path, work: Path, seed: int, threads: int, workers: int, budgets: dict, finetune: bool,
             sabotage: str, noise_seeds: list[int]) -> dict:
    code = CELL.format(threads=threads, root=str(ROOT), data=str(data), work=str(work), seed=seed, workers=workers,
                       budgets=budgets, finetune=finetune, sabotage=sabotage, noise_seeds=noise_seeds)
    row = run_cell_code(code, work, threads, f"seed={seed} threads={threads} workers={workers}")
    return {"seed": seed, "threads": threads, "workers": workers, **row}


def main() -> int:
    from tests.test_engine_transfer import (
        MIN_OVER_NOISE,
        MIN_OVER_UNTRAINED,
        MIN_PRETRAINED,
        probe_holds,
        write_transfer_data,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="default: the test's")
    parser.add_argument("--finetune", action="store_true", help="also finetune from pretrained / noise / random")
    parser.add_argument("--sabotage", choices=("none", "leak"), default="none",
                        help="leak: pretrain with masking that leaks (a control; see README)")
    parser.add_argument("--noise-seeds", type=int, nargs="*", default=[],
                        help="more noise draws probed in each cell (the test's one draw is noise_like's default)")
    parser.add_argument("--out", default="runs/transfer_grid")
    args = parser.parse_args()

    out = Path(args.out)
    data = out / "synth"
    if not (data / "synth.json").is_file():
        write_transfer_data(data)
    budgets = {"pretrain_epochs": args.pretrain_epochs} if args.pretrain_epochs is not None else {}
    tag = "grid" + "".join(f"_{k[0]}{v}" for k, v in budgets.items()) + ("" if args.sabotage == "none" else
                                                                         f"_{args.sabotage}")
    cells = [(s, t, w) for s in args.seeds for t in args.threads for w in args.workers]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda c: run_cell(data, out / f"{tag}_s{c[0]}_t{c[1]}_w{c[2]}", *c, budgets,
                                                args.finetune, args.sabotage, args.noise_seeds), cells))
    arms = ("pretrained", "initial", "noise")
    probes = [{arm: r["probe_" + arm] for arm in arms} for r in rows]
    holds = [probe_holds(p) for p in probes]
    probe = {arm: [p[arm] for p in probes] for arm in arms}
    print(f"{'seed':>4} {'threads':>7} {'workers':>7}   linear probe: {'pretrained':>10} {'untrained':>9} {'noise':>6}"
          f" {'over untr.':>10} {'over noise':>10}  test" + ("   finetune: pretrained  noise  random" * args.finetune))
    for r, p, ok in zip(rows, probes, holds):
        line = (f"{r['seed']:>4} {r['threads']:>7} {r['workers']:>7}   {'':14}{p['pretrained']:>10.1f} "
                f"{p['initial']:>9.1f} {p['noise']:>6.1f} {p['pretrained'] - p['initial']:>10.1f} "
                f"{p['pretrained'] - p['noise']:>10.1f}  {'pass' if ok else 'FAIL'}")
        if args.finetune:
            line += f"   {'':10}{r['pretrained']:>10.1f} {r['noise']:>6.1f} {r['random']:>7.1f}"
        print(line)
    print("min / median / max  " + "   ".join(f"{arm} {spread(v)}" for arm, v in probe.items()) +
          f"   over untrained {spread([a - b for a, b in zip(probe['pretrained'], probe['initial'])])}"
          f"   over noise {spread([a - b for a, b in zip(probe['pretrained'], probe['noise'])])}")
    if args.noise_seeds:
        draws = [[r["probe_noise"]] + [r[f"probe_noise_{n}"] for n in args.noise_seeds] for r in rows]
        print(f"noise draws per cell: all {spread(sum(draws, []))}   pretrained over the best draw of its cell "
              f"{spread([r['probe_pretrained'] - max(d) for r, d in zip(rows, draws)])}")
    if args.finetune:
        print("finetune  " + "   ".join(f"{arm} {spread([r[arm] for r in rows])}"
                                       for arm in ("pretrained", "noise", "random")))
    print(f"bars: pretrained >= {MIN_PRETRAINED:.1f}, >= untrained + {MIN_OVER_UNTRAINED:.1f}, >= noise + "
          f"{MIN_OVER_NOISE:.1f}; {sum(holds)} of {len(rows)} cells pass")
    by_run: dict[tuple, set] = {}
    for r in rows:
        by_run.setdefault((r["seed"], r["threads"]), set()).add(tuple(sorted(r.items() - {("workers", r["workers"])})))
    differing = [k for k, v in by_run.items() if len(v) > 1]
    print("workers 0 vs 2: identical in every (seed, threads) pair" if not differing else
          f"workers 0 vs 2 DIFFER for (seed, threads) {differing}")
    (out / f"{tag}.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
