"""``videoconvmae eval``: multi-view evaluation and shard merging.

    videoconvmae eval PRESET [key.sub=value ...]               checkpoint from eval.checkpoint=PATH
    videoconvmae eval CHECKPOINT [PRESET] [key.sub=value ...]  config from the checkpoint, PRESET on top
    videoconvmae eval merge SHARD_DIR [SHARD_DIR ...] [--out DIR]

The first word is a CHECKPOINT when it is an existing file that is not YAML: the run then starts from the
config saved inside it (the finetuning run's data, model and output folder; not its ``eval`` section, which
set up validation during training: the protocol defaults to the paper's for the dataset), then an optional
PRESET such as ``eval_ssv2`` (e.g. another dataset or protocol), then the overrides.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from videoconvmae.commandline import add_any_order_parser, config_from_args
from videoconvmae.config import Config, merge_layers, preset_layers
from videoconvmae.errors import UserError

USAGE = """videoconvmae eval PRESET [key.sub=value ...]
       videoconvmae eval CHECKPOINT [PRESET] [key.sub=value ...]
       videoconvmae eval merge SHARD_DIR [SHARD_DIR ...] [--out DIR]"""


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")


def _is_checkpoint(word: str) -> bool:
    path = Path(word)
    if "=" in word or path.suffix in (".yaml", ".yml"):
        return False
    if path.suffix in CHECKPOINT_SUFFIXES and not path.is_file():
        raise UserError(f"eval: CHECKPOINT {word}: no such file")
    return path.is_file()


def config_from_checkpoint(checkpoint: str, preset: str | None, overrides: list[str]) -> Config:
    """Schema <- the checkpoint's saved config <- PRESET chain <- task=eval, eval.checkpoint <- overrides."""
    from videoconvmae.artifacts import saved_config

    saved = saved_config(checkpoint, "eval.checkpoint") or {}
    # The saved eval section configured validation DURING training (often fewer views); a standalone eval starts
    # from the paper protocol for the dataset unless PRESET / overrides say otherwise.
    saved = {k: v for k, v in saved.items() if k != "eval"}
    layers: list[tuple[str, dict]] = [(f"{checkpoint} (saved config)", saved)]
    if preset:
        layers += preset_layers(preset)
    layers.append(("eval command", {"task": "eval", "eval": {"checkpoint": checkpoint}}))
    return merge_layers(layers, overrides)


def eval_config(words: list[str]) -> Config:
    if not words:
        raise UserError("eval: expected a PRESET, a CHECKPOINT or `merge` (see videoconvmae eval --help)")
    if _is_checkpoint(words[0]):
        rest = words[1:]
        preset = rest.pop(0) if rest and "=" not in rest[0] else None
        return config_from_checkpoint(words[0], preset, rest)
    return config_from_args(argparse.Namespace(preset=words[0], overrides=words[1:]), task="eval")


def _run(args: argparse.Namespace) -> int:
    if args.words and args.words[0] == "merge":
        return _merge(args.words[1:], args.out)
    if args.out:
        raise UserError("eval: --out belongs to `eval merge`; for a run use eval.out_dir=DIR")
    cfg = eval_config(args.words)
    from videoconvmae.commandline import set_failure_log
    from videoconvmae.data.records import AnnotationError
    from videoconvmae.engine.distributed import is_main_process
    from videoconvmae.eval.multiview import output_dir, run_eval

    set_failure_log(output_dir(cfg) / "log.txt")

    try:
        summary = run_eval(cfg)
    except AnnotationError as e:
        raise UserError(str(e)) from None
    if is_main_process():  # under torchrun every rank holds the same summary
        print(f"{summary['headline']}\nwrote {summary['out_dir']}")
    return _check_unreadable(summary, cfg.data.max_skip_fraction)


def _check_unreadable(summary: dict, max_fraction: float, listed_in: str = "metrics") -> int:
    bad, total = summary["num_unreadable"], summary["num_assigned"]
    if total and bad / total > max_fraction:
        first = summary["unreadable"][0]
        print(f"error: {bad} of {total} items unreadable (> data.max_skip_fraction={max_fraction}); first: "
              f"{first['path']}: {first['error']} (all listed in {summary['files'][listed_in]})", file=sys.stderr)
        return 2
    return 0


def _merge(shards: list[str], out: str | None) -> int:
    from videoconvmae.eval.merge import MergeError, merge_shards

    if not shards:
        raise UserError("eval merge: expected one or more shard output folders")
    try:
        summary = merge_shards(shards, out)
    except (MergeError, FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    print(f"{summary['headline']}\nmerged {len(shards)} shards into {summary['out_dir']}")
    return 0


FEATURES_DOC = """Per-video embeddings of a checkpoint's encoder (pretrain, finetune or linprobe; ours or official).

The checkpoint's saved config gives the model and data.*; PRESET and key.sub=value overrides go on top, as for
eval (e.g. data.root=DIR when the annotation's videos live elsewhere, eval.num_temporal_views=2). The views,
their placement and the sharding (eval.shard=i/n) are eval's, with one decode per video. Writes into --out
(shard-i-of-n/ when sharded): features.npy [N, C] (mean over the views), index.csv (row, video_id, label, path),
features.json; --per-view adds views.npy [N, T*S, C], --per-clip clips.npy [N, T, C]."""


def _features(args: argparse.Namespace) -> int:
    from videoconvmae.data.records import AnnotationError
    from videoconvmae.engine.distributed import is_main_process
    from videoconvmae.eval.features import run_features

    if not _is_checkpoint(args.checkpoint):
        raise UserError(f"features: CHECKPOINT {args.checkpoint}: not a checkpoint file")
    if not Path(args.annotation).exists():
        raise UserError(f"features: ANNOTATION {args.annotation}: no such file or folder")
    words = list(args.words)
    preset = words.pop(0) if words and "=" not in words[0] else None
    cfg = config_from_checkpoint(args.checkpoint, preset, [*words, f"data.val_annotation={args.annotation}",
                                                            "eval.split=val", f"eval.out_dir={args.out}"])
    try:
        summary = run_features(cfg, per_view=args.per_view, per_clip=args.per_clip)
    except AnnotationError as e:
        raise UserError(str(e)) from None
    if is_main_process():
        skipped = f" ({summary['num_unreadable']} unreadable, listed in features.json)" if summary["num_unreadable"] \
            else ""
        print(f"{summary['num_videos']} embeddings of dim {summary['dim']}{skipped}\nwrote {summary['out_dir']}")
    return _check_unreadable(summary, cfg.data.max_skip_fraction, listed_in="metadata")


def register(subparsers: argparse._SubParsersAction) -> None:
    f = add_any_order_parser(subparsers, "features",
                             help="per-video embeddings of a checkpoint's encoder (.npy + index)",
                             description=FEATURES_DOC, formatter_class=argparse.RawDescriptionHelpFormatter,
                             usage="videoconvmae features CHECKPOINT ANNOTATION --out DIR [PRESET] "
                                   "[key.sub=value ...] [--per-view] [--per-clip]")
    f.add_argument("checkpoint", help="checkpoint-*.pt, weights.pt / .safetensors, or an official ConvMAE file")
    f.add_argument("annotation", help="the videos to embed: K400 CSV / list, SSV2 JSON, or an image folder")
    f.add_argument("words", nargs="*", metavar="ARG", help="[PRESET] then key.sub=value overrides")
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument("--per-view", action="store_true", help="also write every view's embedding (views.npy)")
    f.add_argument("--per-clip", action="store_true", help="also write each temporal clip's embedding (clips.npy)")
    f.set_defaults(func=_features)

    p = subparsers.add_parser(
        "eval", help="multi-view evaluation of a finetuned checkpoint; `eval merge` combines shards",
        usage=USAGE, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("words", nargs="*", metavar="ARG",
                   help="PRESET | CHECKPOINT [PRESET], then key.sub=value overrides; or: merge SHARD_DIR ...")
    p.add_argument("--out", default=None, help="eval merge: folder for the merged report (default: the "
                                                "parent of the first shard folder)")
    p.set_defaults(func=_run)
