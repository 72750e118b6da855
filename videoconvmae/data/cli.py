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
        from videoconvmae.errors import UserError

        raise UserError(f"data synth: {e}") from None
    n = args.classes * (args.train_per_class + args.val_per_class)
    print(f"wrote {out}: {n} mp4 (k400/) + {n} webm (ssv2/) clips of {args.frames} frames "
          f"{args.height}x{args.width}, {args.classes} motion classes, images in imagenet/ "
          f"({time.time() - start:.1f} s)")
    return 0


def check_config(annotation: str, words: list[str]):
    """The ``DataConfig`` of ``data check``: [PRESET] + ``data.*`` overrides, as a run reads them; the dataset kind
    is guessed from the annotation unless the preset or an override names it."""
    from videoconvmae.config import load_config, preset_layers
    from videoconvmae.data.check import guess_dataset
    from videoconvmae.errors import UserError

    preset = words[0] if words and "=" not in words[0] else None
    overrides = words[1:] if preset else words
    foreign = [w for w in overrides if not w.startswith("data.")]
    if foreign:
        raise UserError(f"data check: reads data.* keys only, got {foreign[0]!r}")
    named = any(w.split("=", 1)[0] == "data.dataset" for w in overrides) or (
        preset is not None and any("dataset" in (d.get("data") or {}) for _, d in preset_layers(preset)))
    if not named:
        overrides = [f"data.dataset={guess_dataset(annotation)}", *overrides]
    return load_config(preset, overrides).data


def _check(args: argparse.Namespace) -> int:
    from videoconvmae.commandline import emit
    from videoconvmae.data.check import check_annotation
    from videoconvmae.errors import UserError

    if not os.path.exists(args.annotation):
        raise UserError(f"data check: {args.annotation}: no such file or folder")
    cfg = check_config(args.annotation, list(args.words))
    result = check_annotation(cfg, args.annotation, report=args.report, workers=args.workers, frames=args.frames)
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(result.counts.items()))
    emit(f"{args.annotation}: {result.total - len(result.bad)} of {result.total} items readable with "
         f"data.decoder={cfg.decoder}" + (f"; unreadable {len(result.bad)} ({counts})" if result.bad else "")
         + f"; report: {result.report}")
    return 1 if result.bad else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from videoconvmae.commandline import add_any_order_parser

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

    c = add_any_order_parser(
        sub, "check", help="decode every item of an annotation once; report unreadable ones",
        usage="videoconvmae data check ANNOTATION [PRESET] [data.key=value ...] [--frames N] [--workers N] "
              "[--report PATH]",
        description="Decode every item of ANNOTATION once and list the unreadable ones in a TSV report. The data "
        "keys are a run's (data.root, data.dataset, data.decoder, data.decode_timeout_s, data.labels_file, ...), "
        "from an optional PRESET and data.key=value overrides, so a check reads the files exactly as the run "
        "will; data.dataset defaults to a guess from ANNOTATION (folder: imagefolder, .json: ssv2, else k400).")
    c.add_argument("annotation", help="K400 CSV, SSV2 train/validation.json, `<path> <label>` list or image folder")
    c.add_argument("words", nargs="*", metavar="ARG", help="[PRESET] then data.key=value overrides")
    c.add_argument("--frames", type=int, default=16, help="frames decoded per video, first to last (16)")
    c.add_argument("--workers", type=int, default=1, help="decoding processes (1)")
    c.add_argument("--report", default=None, help="TSV report path (default: ANNOTATION.check.tsv)")
    c.set_defaults(func=_check)
