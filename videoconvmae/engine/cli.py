"""``videoconvmae pretrain|finetune|linprobe PRESET [key.sub=value ...]`` and ``videoconvmae visualize``."""

from __future__ import annotations

import argparse
import json

from videoconvmae.engine.tasks import TRAIN_TASKS

HELP = {
    "pretrain": "masked-autoencoder pretraining (image or video)",
    "finetune": "supervised finetuning of a pretrained encoder",
    "linprobe": "linear probing of a frozen pretrained encoder",
}


def _run(args: argparse.Namespace) -> int:
    from videoconvmae.cli import UserError, config_from_args
    from videoconvmae.engine.distributed import is_main_process
    from videoconvmae.engine.tasks import run_task
    from videoconvmae.engine.trainer import NonFiniteLossError

    cfg = config_from_args(args, task=args.command)  # unknown keys fail here, before any work
    try:
        result = run_task(cfg)
    except NonFiniteLossError as e:
        raise UserError(str(e)) from None
    if is_main_process():  # under torchrun every rank returns the same result: print it once
        print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}))
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
