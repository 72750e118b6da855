"""Per-rank memory of one pretrain step under DDP vs FSDP (train.parallel=fsdp) on 2 gloo processes, CPU.

    .venv/bin/python bench/bench_fsdp_memory.py                 # convmae_huge_pretrain, videoconvmae_large_pretrain
    .venv/bin/python bench/bench_fsdp_memory.py --dtype bf16    # weights, gradients, AdamW state in bf16
    .venv/bin/python bench/bench_fsdp_memory.py --quick         # tiny models: a seconds-long smoke run

Each case (model x ddp | fsdp) runs in fresh processes: 2 ranks build the model (same seed), wrap it (DDP, or
the engine's ``fsdp.shard_model``: every transformer block, then the root), and take one AdamW step on a batch
of 1 random clip with the model's default mask. Reported per rank (the max over the 2 ranks):

* ``state`` — bytes this rank holds in parameters + gradients + optimizer state after the step, counted from the
  tensors themselves (a DTensor counts its local shard). The goal: FSDP <= 0.6 x DDP. DDP's gradient buckets are
  not in this count (they are in the peak), so the ratio is, if anything, in DDP's favour.
* ``peak`` — the process's peak resident memory (VmHWM): everything, the all-gathered blocks, DDP's buckets,
  activations and the Python / torch libraries included.

Memory: DDP holds every tensor on every rank: ~ n_params x bytes x 5 per rank (weights, gradients, 2 AdamW
moments, buckets). A case whose estimate for both ranks does not fit in the available memory (MemAvailable, with
a 25% margin) is skipped with a line saying so, rather than pushing the machine into the OOM killer.
The input size only changes activations (``--input``; default 16x112x112 video, 112x112 image), not ``state``.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without install

FULL_MODELS = ["convmae_huge_pretrain", "videoconvmae_large_pretrain"]
QUICK_MODELS = ["convmae_tiny_pretrain", "videoconvmae_tiny_pretrain"]
WORLD = 2


def _proc_bytes(path: str, key: str) -> int | None:
    """A ``key: N kB`` line of a /proc file, in bytes (None off Linux)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _local_bytes(t: torch.Tensor) -> int:
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t.to_local()
    return t.numel() * t.element_size()


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Parameters + gradients + optimizer state held by this process."""
    total = 0
    for p in model.parameters():
        total += _local_bytes(p)
        if p.grad is not None:
            total += _local_bytes(p.grad)
    for state in optimizer.state.values():
        total += sum(_local_bytes(v) for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
    return total


def _input_shape(model: torch.nn.Module, size: list[int]) -> tuple[int, ...]:
    frames, side = size
    return (1, 3, frames, side, side) if model.spatial_dims == 3 else (1, 3, side, side)


def _worker(rank: int, name: str, mode: str, dtype: str, size: list[int], port: int, out: str) -> None:
    import torch.distributed as dist

    from videoconvmae import compat  # noqa: F401
    from videoconvmae.engine import fsdp
    from videoconvmae.models import create_model

    torch.set_num_threads(1)
    # a stuck collective shows where it is stuck instead of hanging the bench
    faulthandler.dump_traceback_later(int(os.environ.get("BENCH_STUCK_S", "1800")), exit=True)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    model = create_model(name)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    if mode == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    else:
        wrapped = fsdp.shard_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(_input_shape(model, size), dtype=next(model.parameters()).dtype)
    loss = wrapped(x)["loss"]
    loss.float().backward()
    optimizer.step()
    row = {"rank": rank, "state": state_bytes(model, optimizer), "peak": _proc_bytes("/proc/self/status", "VmHWM"),
           "loss": float(loss.detach())}
    rows: list = [None] * WORLD
    dist.all_gather_object(rows, row)
    if rank == 0:
        Path(out).write_text(json.dumps(rows))
    sys.stdout.flush()
    # No destroy_process_group: the processes end here, and gloo's teardown once hung a rank whose peer had gone.
    os._exit(0)


def _case(name: str, mode: str, dtype: str, size: list[int]) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        # its own interpreter per case: one case's freed-but-kept heap must not count in the next one's peak
        subprocess.run([sys.executable, __file__, "--case", name, mode, dtype, *map(str, size), str(port), str(out)],
                       check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return json.loads(out.read_text())


def _run_case(words: list[str]) -> int:
    """``--case NAME MODE DTYPE FRAMES SIDE PORT OUT``: the 2 ranks of one case."""
    import torch.multiprocessing as mp

    name, mode, dtype, frames, side, port, out = words
    mp.spawn(_worker, args=(name, mode, dtype, [int(frames), int(side)], int(port), out), nprocs=WORLD)
    return 0


def _n_params(name: str) -> int:
    from videoconvmae import compat  # noqa: F401
    from videoconvmae.models import create_model

    with torch.device("meta"):
        return sum(p.numel() for p in create_model(name).parameters())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(FULL_MODELS)}")
    parser.add_argument("--quick", action="store_true", help=f"tiny models ({' '.join(QUICK_MODELS)}), 32 px")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--input", nargs=2, type=int, default=None, metavar=("FRAMES", "SIDE"),
                        help="clip size (images use SIDE only); default 16 112, --quick 4 32")
    parser.add_argument("--case", nargs=7, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        return _run_case(args.case)
    models = args.models or (QUICK_MODELS if args.quick else FULL_MODELS)
    size = args.input or ([4, 32] if args.quick else [16, 112])
    elem = 2 if args.dtype == "bf16" else 4
    gb = 1024**3
    print(f"# {WORLD} gloo processes, CPU, batch 1, input {size[0]}x{size[1]}x{size[1]} (images {size[1]}px), "
          f"{args.dtype} weights / gradients / AdamW state; per rank = max over ranks")
    print(f"{'model':30s} {'params':>8s} {'mode':5s} {'state GB':>9s} {'peak GB':>8s}  ratio fsdp/ddp")
    for name in models:
        n = _n_params(name)
        found: dict[str, dict] = {}
        for mode in ("ddp", "fsdp"):
            need = WORLD * n * elem * (5 if mode == "ddp" else 3)  # fsdp: its shards plus the gathered weights
            available = _proc_bytes("/proc/meminfo", "MemAvailable")
            if available is not None and need > 0.75 * available:
                print(f"{name:30s} {n / 1e6:7.0f}M {mode:5s} skipped: needs ~{need / gb:.1f} GB, "
                      f"{available / gb:.1f} GB available")
                continue
            rows = _case(name, mode, args.dtype, size)
            found[mode] = {"state": max(r["state"] for r in rows),
                           "peak": max(r["peak"] for r in rows) if all(r["peak"] for r in rows) else None}
            peak = found[mode]["peak"]
            ratio = ""
            if mode == "fsdp" and "ddp" in found:
                ratio = f"state {found['fsdp']['state'] / found['ddp']['state']:.2f}"
                if peak and found["ddp"]["peak"]:
                    ratio += f", peak {peak / found['ddp']['peak']:.2f}"
            print(f"{name:30s} {n / 1e6:7.0f}M {mode:5s} {found[mode]['state'] / gb:9.2f} "
                  f"{(peak or 0) / gb:8.2f}  {ratio}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
