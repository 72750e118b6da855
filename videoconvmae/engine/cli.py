"""``videoconvmae pretrain|finetune|linprobe PRESET [key.sub=value ...]`` and ``videoconvmae visualize``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from videoconvmae.engine.tasks import TRAIN_TASKS

HELP = {
    "pretrain": "masked-autoencoder pretraining (image or video)",
    "finetune": "supervised finetuning of a pretrained encoder",
    "linprobe": "linear probing of a frozen pretrained encoder",
}


class StopOnSignals:
    """SIGINT / SIGTERM set ``event``: the loop saves a checkpoint at the next step boundary and returns
    ``stopped``; a second signal exits at once without saving.

    The signals are blocked in the main thread, hence in every DataLoader worker forked later (a worker killed by
    Ctrl-C would crash the run before it can save), and taken by a watcher thread, as the launch layer does for
    Slurm's signals (``launch/job.py``; that one also requeues, which a plain run has nobody to do).
    """

    SIGNALS = {signal.SIGINT, signal.SIGTERM}

    def __enter__(self) -> StopOnSignals:
        self.event, self.signum, self._done = threading.Event(), 0, threading.Event()
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        self._watcher = threading.Thread(target=self._watch, name="stop-signals", daemon=True)
        self._watcher.start()
        return self

    def _watch(self) -> None:
        while not self._done.is_set():
            info = signal.sigtimedwait(self.SIGNALS, 0.2)
            if info is None:
                continue
            name = signal.Signals(info.si_signo).name
            if self.event.is_set():
                print(f"[signal] second {name}: exiting without saving", file=sys.stderr, flush=True)
                os._exit(128 + info.si_signo)
            self.signum = info.si_signo
            print(f"[signal] {name}: saving a checkpoint at the next step boundary ({name} again exits at once)",
                  file=sys.stderr, flush=True)
            self.event.set()

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._watcher.join()
        while signal.sigtimedwait(self.SIGNALS, 0) is not None:  # arrived as the run ended: nothing to stop
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from videoconvmae.cli import UserError, config_from_args, set_failure_log
    from videoconvmae.engine.tasks import run_task
    from videoconvmae.engine.trainer import NonFiniteLossError

    cfg = config_from_args(args, task=args.command)  # unknown keys fail here, before any work
    set_failure_log(Path(cfg.train.output_dir) / "log.txt")
    try:
        with StopOnSignals() as stop:
            result = run_task(cfg, stop.event)
    except NonFiniteLossError as e:
        raise UserError(str(e)) from None
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}))
    if result.get("status") == "stopped":
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
    from videoconvmae.cli import add_config_args

    for task in TRAIN_TASKS:
        p = subparsers.add_parser(task, help=HELP[task], description=f"{HELP[task]}; resumes from "
                                  "<train.output_dir> by default (train.resume=auto)")
        add_config_args(p)
        p.set_defaults(func=_run)
    v = subparsers.add_parser("visualize", help="original / masked / reconstruction side by side",
                              description="Reconstruct an image (-> .png) or a video (-> .gif / .mp4) with a "
                              "pretrain checkpoint (checkpoint-*.pt or weights.pt).")
    v.add_argument("checkpoint", help="pretrain checkpoint or exported weights.pt")
    v.add_argument("input", help="an image or a video file")
    v.add_argument("--out", required=True, help="output file: .png for an image, .gif or .mp4 for a video")
    v.add_argument("--seed", type=int, default=0, help="seed of the random mask")
    v.add_argument("--mask-ratio", type=float, default=None, help="override the checkpoint's mask ratio")
    v.set_defaults(func=_visualize)
