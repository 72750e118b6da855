"""``videoconvmae data synth --out DIR`` and ``videoconvmae data check ANNOTATION``."""

from __future__ import annotations

import argparse
import os
import time


def _synth(args: argparse.Namespace) -> int:
    from videoconvmae.data.synth import write_synthetic_dataset

    start = time.time()
    spec = dict(num_classes=args.classes, train_per_class=args.train_per_class, val_per_class=args.val_per_class,
                num_frames=args.frames, height=args.height, width=args.width, images_per_class=args.images_per_class,
                workers=args.workers)
    try:
        out = write_synthetic_dataset(args.out, seed=args.seed, **spec)
    except ValueError as e:
        from videoconvmae.cli import UserError

        raise UserError(f"data synth: {e}") from None
    n = args.classes * (args.train_per_class + args.val_per_class)
    print(f"wrote {out}: {n} mp4 (k400/) + {n} webm (ssv2/) clips of {args.frames} frames "
          f"{args.height}x{args.width}, {args.classes} motion classes, images in imagenet/ "
          f"({time.time() - start:.1f} s)")
    return 0


def _check(args: argparse.Namespace) -> int:
    from videoconvmae.data.check import check_annotation, guess_dataset
    from videoconvmae.data.config import DataConfig

    if not os.path.exists(args.annotation):
        from videoconvmae.cli import UserError

        raise UserError(f"data check: {args.annotation}: no such file or folder")
    if args.preset:  # decode exactly as the run will: its decoder, root, labels, time limit
        from videoconvmae.config import load_config

        cfg = load_config(args.preset).data
        cfg.dataset = args.dataset or cfg.dataset
    else:
        cfg = DataConfig(dataset=args.dataset or guess_dataset(args.annotation))
    given = {"root": args.root, "labels_file": args.labels_file, "decoder": args.decoder,
             "decode_timeout_s": args.timeout}
    for key, value in given.items():
        if value is not None:
            setattr(cfg, key, value)
    result = check_annotation(cfg, args.annotation, report=args.report, workers=args.workers, frames=args.frames)
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(result.counts.items()))
    print(f"{args.annotation}: {result.total - len(result.bad)} of {result.total} items readable with "
          f"data.decoder={cfg.decoder}" + (f"; unreadable {len(result.bad)} ({counts})" if result.bad else "")
          + f"; report: {result.report}")
    return 1 if result.bad else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from videoconvmae.data.config import DataConfig

    p = subparsers.add_parser("data", help="synthetic dataset, dataset checks")
    sub = p.add_subparsers(dest="data_command", required=True)

    s = sub.add_parser("synth", help="write the synthetic motion dataset (K400 CSV / SSV2 JSON / lists / images)")
    s.add_argument("--out", required=True, help="output folder (k400/, ssv2/, imagenet/ are created in it)")
    s.add_argument("--seed", type=int, default=0, help="everything is derived from it (default 0)")
    s.add_argument("--classes", type=int, default=6, help="motion classes, 5..8 (default 6)")
    s.add_argument("--train-per-class", type=int, default=32, help="train clips per class and dataset (32)")
    s.add_argument("--val-per-class", type=int, default=8, help="val clips per class and dataset (8)")
    s.add_argument("--frames", type=int, default=64, help="frames per clip (64)")
    s.add_argument("--height", type=int, default=64, help="frame height, even (64)")
    s.add_argument("--width", type=int, default=80, help="frame width, even (80)")
    s.add_argument("--images-per-class", type=int, default=20, help="image-mode train images per class (20)")
    s.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding processes (all cores)")
    s.set_defaults(func=_synth)

    c = sub.add_parser("check", help="decode every item of an annotation once; report unreadable ones")
    c.add_argument("annotation", help="K400 CSV, SSV2 train/validation.json, `<path> <label>` list or image folder")
    c.add_argument("--dataset", choices=("k400", "ssv2", "imagefolder"), default=None,
                   help="annotation kind (default: folder -> imagefolder, .json -> ssv2, else k400)")
    c.add_argument("--preset", default=None, help="take data.decoder / root / labels_file / decode_timeout_s from "
                   "this run preset, so the check decodes as that run will (recommended)")
    c.add_argument("--root", default=None, help="folder the annotation's paths are relative to (data.root)")
    c.add_argument("--labels-file", default=None, help="SSV2 labels.json (default: next to the JSON)")
    c.add_argument("--decoder", choices=("decord", "pyav", "torchcodec"), default=None,
                   help=f"(the preset's data.decoder; without --preset the default {DataConfig().decoder})")
    c.add_argument("--frames", type=int, default=16, help="frames decoded per video, first to last (16)")
    c.add_argument("--timeout", type=float, default=None,
                   help=f"seconds per decode before 'timeout' (data.decode_timeout_s, {DataConfig().decode_timeout_s:g})")
    c.add_argument("--workers", type=int, default=1, help="decoding processes (1)")
    c.add_argument("--report", default=None, help="TSV report path (default: ANNOTATION.check.tsv)")
    c.set_defaults(func=_check)
