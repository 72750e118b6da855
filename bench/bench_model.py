"""Pretrain step time and peak memory of the model core on this machine (the baseline for the speed issue).

    .venv/bin/python bench/bench_model.py            # convmae_base (2x3x224x224), videoconvmae_base (2x3x16x224x224)
    .venv/bin/python bench/bench_model.py --quick    # tiny models, small inputs: a seconds-long CI smoke run
    .venv/bin/python bench/bench_model.py --dense    # stages 1-2 on every position (the masked-conv reference)

The models run as the registry builds them (the visible-only conv stages by default, ``sparse_stages``);
``--dense`` measures the dense masked-convolution reference path; bench/bench_sparse.py compares the two.

One step = forward (masked, the model's default mask) + backward + AdamW step. Reported: the median step time over
``--steps`` timed steps after ``--warmup`` untimed ones, and the process's peak resident memory during the case
(VmHWM from /proc/self/status, reset after the model is built by writing "5" to /proc/self/clear_refs), next to
the resident memory before the first step. Each case runs in its own process, so one case's freed-but-kept heap
never inflates the next one's numbers. Linux only for the memory numbers; elsewhere they print as n/a.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without install

from videoconvmae.models import create_model  # noqa: E402

FULL_CASES = [
    ("convmae_base_pretrain", (2, 3, 224, 224)),
    ("videoconvmae_base_pretrain", (2, 3, 16, 224, 224)),
]
QUICK_CASES = [
    ("convmae_tiny_pretrain", (2, 3, 64, 64)),
    ("videoconvmae_tiny_pretrain", (2, 3, 4, 64, 64)),
]


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_memory() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def bench_case(name: str, shape: tuple[int, ...], steps: int, warmup: int, seed: int = 0,
               dense: bool = False) -> dict:
    torch.manual_seed(seed)
    model = create_model(name).train()
    if dense:
        model.sparse_stages = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    x = torch.randn(shape)
    generator = torch.Generator().manual_seed(seed)
    rss_before = _status_kb("VmRSS")
    can_reset = reset_peak_memory()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = model(x, generator=generator)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = _status_kb("VmHWM") if can_reset else None
    return {
        "model": name, "input": list(shape), "sparse_stages": bool(getattr(model, "sparse_stages", False)),
        "threads": torch.get_num_threads(), "steps": steps,
        "step_s_median": statistics.median(times), "step_s_min": min(times), "step_s_max": max(times),
        "rss_before_mib": rss_before / 1024 if rss_before else None,
        "peak_rss_mib": peak / 1024 if peak else None,
        "loss": loss.detach().item(),
    }


def run_isolated(name: str, args: argparse.Namespace, steps: int) -> dict:
    """One case in a fresh interpreter (clean peak-memory numbers); it prints its result as a JSON line."""
    cmd = [sys.executable, __file__, "--case", "--only", name, "--steps", str(steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads)] + (["--quick"] if args.quick else []) + (["--dense"] if args.dense else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and inputs (CI smoke run)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (default 3, quick 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--dense", action="store_true", help="dense masked-conv stages (sparse_stages off)")
    parser.add_argument("--only", default="", help="run only cases whose model name contains this")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--case", action="store_true", help=argparse.SUPPRESS)  # child: one case, JSON out
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (5 if args.quick else 3)
    cases = [c for c in (QUICK_CASES if args.quick else FULL_CASES) if args.only in c[0]]
    if args.case:
        name, shape = next(c for c in cases if c[0] == args.only)
        print(json.dumps(bench_case(name, shape, steps, args.warmup, dense=args.dense)))
        return 0
    print(f"{'model':<28} {'path':<7} {'input':<20} {'step median (s)':>16} {'min-max (s)':>14} {'peak RSS (MiB)':>15} "
          f"{'RSS before':>11}")
    results = []
    for name, shape in cases:
        r = run_isolated(name, args, steps)
        results.append(r)
        peak = f"{r['peak_rss_mib']:.0f}" if r["peak_rss_mib"] else "n/a"
        before = f"{r['rss_before_mib']:.0f}" if r["rss_before_mib"] else "n/a"
        path = "sparse" if r["sparse_stages"] else "dense"
        print(f"{name:<28} {path:<7} {'x'.join(map(str, shape)):<20} {r['step_s_median']:>16.3f} "
              f"{r['step_s_min']:>6.2f}-{r['step_s_max']:<7.2f} {peak:>15} {before:>11}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
