"""Sparse (visible-only) vs dense conv stages in pretraining: step time, peak memory and FLOPs, side by side.

    .venv/bin/python bench/bench_sparse.py           # ConvMAE-B 8x3x224x224 75% block mask,
                                                     # VideoConvMAE-B 2x3x16x224x224 90% tube mask
    .venv/bin/python bench/bench_sparse.py --quick   # tiny models (seconds; a smoke run)

Goals (issue 9): image >= 1.3x faster, video >= 2x faster with peak memory <= 0.6x.

Time: ONE model and optimizer per case; every timed round runs a dense step and a sparse step back to back on the
same input and mask (``model.sparse_stages`` toggled), so machine noise hits both alike; median over ``--steps``
rounds after ``--warmup``. Memory: each (case, path) in a fresh interpreter: build, one warm-up step, reset the
peak (VmHWM via /proc/self/clear_refs), one step; we print the whole process's peak RSS and the step's own
increment over the RSS before it. FLOPs: ``torch.utils.flop_counter`` over forward + backward of each path
(matmuls, convs, attention; groups-aware conv backward), so the distance of the measured speed-up to the FLOP
bound shows.
The ratios (dense / sparse for time and FLOPs, sparse / dense for memory) are the last lines.
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
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without install
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import _status_kb, reset_peak_memory  # noqa: E402

from videoconvmae.models import create_model  # noqa: E402
from videoconvmae.models.masking import make_mask  # noqa: E402

FULL_CASES = {
    "image": ("convmae_base_pretrain", (8, 3, 224, 224), "block", 0.75),
    "video": ("videoconvmae_base_pretrain", (2, 3, 16, 224, 224), "tube", 0.9),
}
QUICK_CASES = {
    "image": ("convmae_tiny_pretrain", (4, 3, 64, 64), "block", 0.75),
    "video": ("videoconvmae_tiny_pretrain", (2, 3, 8, 64, 64), "tube", 0.9),
}


def setup(case: tuple, seed: int = 0):
    name, shape, mask_type, ratio = case
    torch.manual_seed(seed)
    model = create_model(name, mask_type=mask_type, mask_ratio=ratio).train()
    # fused: one kernel per parameter group; on CPU it halves the optimizer step, which both paths pay alike
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
    x = torch.randn(shape)
    mask = make_mask(mask_type, shape[0], model.token_grid(shape), ratio, torch.Generator().manual_seed(seed))
    return model, opt, x, mask


def step(model, opt, x, mask, sparse: bool) -> float:
    model.sparse_stages = sparse
    start = time.perf_counter()
    loss = model(x, mask=mask)["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Grouped-conv-aware backward count. torch 2.13's formula ignores ``groups`` and charges a depthwise conv's
    weight gradient as a dense C x C conv (~C times too much: 32 GFLOP of backward for a 0.1 GFLOP forward here).
    Each requested gradient (input, weight) costs one forward conv, whose count is right for groups."""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(model, x, mask, sparse: bool) -> int:
    model.sparse_stages = sparse
    model.zero_grad(set_to_none=True)
    custom = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        model(x, mask=mask)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_case(case: tuple, steps: int, warmup: int) -> dict:
    model, opt, x, mask = setup(case)
    flops = {path: count_flops(model, x, mask, path == "sparse") for path in ("dense", "sparse")}
    times: dict[str, list[float]] = {"dense": [], "sparse": []}
    for i in range(warmup + steps):
        order = ("dense", "sparse") if i % 2 == 0 else ("sparse", "dense")
        for path in order:
            t = step(model, opt, x, mask, path == "sparse")
            if i >= warmup:
                times[path].append(t)
    return {"flops": flops, "step_s": {p: statistics.median(v) for p, v in times.items()}, "times": times}


def memory_child(case: tuple, sparse: bool) -> dict:
    model, opt, x, mask = setup(case)
    step(model, opt, x, mask, sparse)  # warm-up: optimizer state, allocator pools
    rss_before = _status_kb("VmRSS")
    ok = reset_peak_memory()
    step(model, opt, x, mask, sparse)
    peak = _status_kb("VmHWM") if ok else None
    return {"peak_mib": peak / 1024 if peak else None,
            "step_mib": (peak - rss_before) / 1024 if peak and rss_before else None}


def memory_case(kind: str, args: argparse.Namespace, path: str) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", kind, path] + (["--quick"] if args.quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models (smoke run)")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds (one dense + one sparse step each)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--only", choices=("image", "video"), default=None, help="run one case")
    parser.add_argument("--memory-child", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cases = QUICK_CASES if args.quick else FULL_CASES
    if args.memory_child:
        kind, path = args.memory_child
        print(json.dumps(memory_child(cases[kind], path == "sparse")))
        return 0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    ratios = []
    for kind in [args.only] if args.only else list(cases):
        name, shape, mask_type, ratio = cases[kind]
        timing = time_case(cases[kind], args.steps, args.warmup)
        memory = {path: memory_case(kind, args, path) for path in ("dense", "sparse")}
        print(f"\n{kind}: {name} input {'x'.join(map(str, shape))}, {mask_type} mask {ratio:.0%}")
        print(f"  {'path':<7} {'step median (s)':>16} {'GFLOP fwd+bwd':>14} {'peak RSS (MiB)':>15} "
              f"{'step +RSS (MiB)':>16}")
        for path in ("dense", "sparse"):
            mem = memory[path]
            peak = f"{mem['peak_mib']:.0f}" if mem["peak_mib"] else "n/a"
            inc = f"{mem['step_mib']:.0f}" if mem["step_mib"] else "n/a"
            print(f"  {path:<7} {timing['step_s'][path]:>16.3f} {timing['flops'][path] / 1e9:>14.1f} "
                  f"{peak:>15} {inc:>16}")
        speedup = timing["step_s"]["dense"] / timing["step_s"]["sparse"]
        bound = timing["flops"]["dense"] / timing["flops"]["sparse"]
        mem_ratio = _ratio(memory["sparse"]["peak_mib"], memory["dense"]["peak_mib"])
        step_mem_ratio = _ratio(memory["sparse"]["step_mib"], memory["dense"]["step_mib"])
        ratios.append((kind, speedup, bound, mem_ratio, step_mem_ratio))
    print()
    for kind, speedup, bound, mem_ratio, step_mem_ratio in ratios:
        mem = f"{mem_ratio:.2f}x" if mem_ratio else "n/a"
        step_mem = f"{step_mem_ratio:.2f}x" if step_mem_ratio else "n/a"
        print(f"{kind}: sparse speed-up {speedup:.2f}x (FLOP bound {bound:.2f}x); "
              f"peak memory sparse/dense {mem} (step increment {step_mem})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
