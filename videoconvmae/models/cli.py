"""``videoconvmae models [--params]``: list the registered models, optionally with parameter counts."""

from __future__ import annotations

import argparse


def _models(args: argparse.Namespace) -> int:
    import torch

    from videoconvmae.commandline import emit
    from videoconvmae.models.registry import FAMILIES, SIZES, count_params, create_model, list_models

    names = [n for n in list_models() if args.filter in n]
    if not args.params:
        emit("\n".join(names))
        return 0
    emit(f"{'model':<30} {'encoder (M)':>12} {'total (M)':>10} {'paper (M)':>10} {'diff':>7}")
    for name in names:
        with torch.device("meta"):  # shapes only: even convmae_huge counts in milliseconds, no memory
            counts = count_params(create_model(name))
        paper = SIZES[FAMILIES[name.rsplit("_", 1)[0]].size].paper_params_m
        encoder_m = counts["encoder"] / 1e6
        paper_txt = f"{paper:>10.0f} {100 * (encoder_m - paper) / paper:>+6.1f}%" if paper else f"{'-':>10} {'':>7}"
        emit(f"{name:<30} {encoder_m:>12.2f} {counts['total'] / 1e6:>10.2f} {paper_txt}")
    emit("encoder = patch embeds + stages 1-3 + final norm, as Table 7 counts it (multi-scale fusion convs, "
          "decoder and head excluded); paper = Table 7 (image and video share the encoder sizes)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list registered models (--params: parameter counts vs the paper)")
    p.add_argument("--params", action="store_true", help="print encoder / total parameters and Table 7's numbers")
    p.add_argument("--filter", default="", help="only names containing this text")
    p.set_defaults(func=_models)
