"""The demo's finetune numbers at its FULL budgets over seeds and torch threads: the spread, not one run.

    .venv/bin/python bench/demo_spread.py --seeds 0 1 2 --threads 1 --jobs 2
    .venv/bin/python bench/demo_spread.py --seeds 0 --threads 1 2 --noise    # + the finetune from noise

Each cell runs, in a fresh interpreter with ``OMP_NUM_THREADS`` set, exactly the demo's training stages
(``tools/demo.py``: pretrain_k400_tiny, then finetune_k400_tiny from its weights and from random init, on the
default synthetic dataset, every preset at its own budget) with ``train.seed`` set to the cell's seed, and reads
each finetune's last val top-1. ``--noise`` adds the finetune from noise with the pretrained weights' per-tensor
mean and std (``tests/test_engine_transfer.noise_like``), the control that shows what of the gap is weight scale.
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
from tests.test_engine_transfer import noise_like
from tools.demo import k400_overrides, last_val_top1
from videoconvmae.cli import main
data, work, seed = Path({data!r}), Path({work!r}), {seed}
common = [*k400_overrides(data), f"train.seed={{seed}}", "train.progress=false", "train.tensorboard=false"]
assert main(["pretrain", "pretrain_k400_tiny", *common, f"train.output_dir={{work}}/pretrain"]) == 0
starts = {{"pretrained": str(work / "pretrain" / "weights.pt"), "random": ""}}
if {noise!r}:
    starts["noise"] = str(noise_like(work / "pretrain" / "weights.pt", work / "noise_weights.pt"))
row = {{}}
for arm, weights in starts.items():
    assert main(["finetune", "finetune_k400_tiny", *common, f"model.pretrained={{weights}}",
                 f"train.output_dir={{work}}/finetune_{{arm}}"]) == 0
    row[arm] = last_val_top1(work / f"finetune_{{arm}}")
print("CELL", json.dumps(row))
"""


def run_cell(data: Path, work: Path, seed: int, threads: int, noise: bool) -> dict:
    code = CELL.format(threads=threads, root=str(ROOT), data=str(data), work=str(work), seed=seed, noise=noise)
    return {"seed": seed, "threads": threads, **run_cell_code(code, work, threads, f"seed={seed} threads={threads}")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once")
    parser.add_argument("--noise", action="store_true", help="also finetune from noise of the pretrained statistics")
    parser.add_argument("--out", default="runs/demo_spread")
    args = parser.parse_args()
    out = Path(args.out)
    data = out / "synth"
    if not (data / "synth.json").is_file():  # the demo's dataset: every generator default
        from videoconvmae.cli import main as cli

        assert cli(["data", "synth", "--out", str(data)]) == 0
    cells = [(s, t) for t in args.threads for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda c: run_cell(data, out / f"demo_s{c[0]}_t{c[1]}", *c, args.noise), cells))
    arms = [k for k in rows[0] if k not in ("seed", "threads")]
    print("| seed | threads | " + " | ".join(f"from {a}" for a in arms) + " |")
    print("|---|---|" + "---|" * len(arms))
    for r in rows:
        print(f"| {r['seed']} | {r['threads']} | " + " | ".join(f"{r[a]:.1f}" for a in arms) + " |")
    for a in arms:
        print(f"from {a}: min / median / max {spread([r[a] for r in rows])} ({len(rows)} cells)")
    (out / "demo_spread.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
