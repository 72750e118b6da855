"""``videoconvmae pretrain|finetune|linprobe PRESET [key.sub=value ...]`` and ``videoconvmae visualize``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from videoconvmae.task import Task

HELP = {
    "pretrain": "masked-autoencoder pretraining (image or video)",
    "finetune": "supervised finetuning of a pretrained encoder",
    "linprobe": "linear probing of a frozen pretrained encoder",
}


class StopOnSignals:
    """SIGINT / SIGTERM set ``event``: the loop saves a checkpoint at the next step boundary and returns
    ``stopped``; a second signal exits at once without saving.

    Python-level handlers, not a blocked mask as in the launch layer (``launch/job.py``): forked DataLoader
    workers inherit them, and a worker must neither die of the terminal's Ctrl-C (it reaches the whole process
    group and would crash the run before it saves) nor survive the SIGTERM its DataLoader ends it with (a
    blocked one left the process waiting for its workers forever at exit). So in a worker SIGINT is ignored
    and SIGTERM does what it always does.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> StopOnSignals:
        self.event, self.signum, self._pid = threading.Event(), 0, os.getpid()
        self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        return self

    def _on_signal(self, signum: int, frame: object) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker
            if signum == signal.SIGTERM:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        name = signal.Signals(signum).name
        if self.event.is_set():
            print(f"[signal] second {name}: exiting without saving", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        print(f"[signal] {name}: saving a checkpoint at the next step boundary ({name} again exits at once)",
              file=sys.stderr, flush=True)
        self.event.set()

    def __exit__(self, *exc: object) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from videoconvmae.commandline import config_from_args, set_failure_log
    from videoconvmae.engine.distributed import is_main_process
    from videoconvmae.engine.tasks import run_task
    from videoconvmae.engine.trainer import NonFiniteLossError
    from videoconvmae.errors import UserError

    cfg = config_from_args(args, task=args.command)  # unknown keys fail here, before any work
    set_failure_log(Path(cfg.train.output_dir) / "log.txt")
    try:
        with StopOnSignals() as stop:
            result = run_task(cfg, stop.event)
    except NonFiniteLossError as e:
        raise UserError(str(e)) from None
    if is_main_process():  # under torchrun every rank returns the same result: print it once
        print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}))
    if result.get("status") == "stopped":
        if is_main_process():
            print(f"stopped by {signal.Signals(stop.signum).name} at step {result['step']}: {result['checkpoint']}; "
                  "the same command continues the run", file=sys.stderr)
        return 128 + stop.signum
    return 0


def _visualize(args: argparse.Namespace) -> int:
    from videoconvmae.engine.visualize import visualize

    path = visualize(args.checkpoint, args.input, args.out, seed=args.seed, mask_ratio=args.mask_ratio)
    print(path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from videoconvmae.commandline import add_config_args

    for task in (t.value for t in Task if t.trains):
        p = subparsers.add_parser(task, help=HELP[task], description=f"{HELP[task]}; resumes from "
                                  "<train.output_dir> by default (train.resume=auto)")
        add_config_args(p)
        p.set_defaults(func=_run)
    v = subparsers.add_parser("visualize", help="original / masked / reconstruction side by side",
                              description="Reconstruct an image (-> .png) or a video (-> .gif / .mp4) with a "
                              "pretrain checkpoint (checkpoint-*.pt, weights.pt or weights.safetensors).")
    v.add_argument("checkpoint", help="pretrain checkpoint or exported weights (.pt / .safetensors)")
    v.add_argument("input", help="an image or a video file")
    v.add_argument("--out", required=True, help="output file: .png for an image, .gif or .mp4 for a video")
    v.add_argument("--seed", type=int, default=0, help="seed of the random mask")
    v.add_argument("--mask-ratio", type=float, default=None, help="override the checkpoint's mask ratio")
    v.set_defaults(func=_visualize)
