"""The embedded default: the whole pipeline on synthetic videos with tiny models, through the real CLI.

    ./run.sh                       # installs .venv/, then runs this
    .venv/bin/python tools/demo.py [--out runs/demo] [--data data/synth] [--fresh-data]

Stages (each one `videoconvmae ...` command with a tiny preset, each with its own progress bar):
  1. data synth        motion-only synthetic clips (H.264 mp4 + VP9 webm, K400 / SSV2 / ImageNet layouts)
  2. pretrain          VideoConvMAE-tiny, 75% tube masks
  3. finetune x2       the same budget from the pretrained encoder and from random init
  4. eval              multi-view (5 temporal x 3 spatial) vs single-view top-1 on the val split, of the
                       finetuned model with the better val top-1
  5. visualize         original / masked / reconstruction video of one val clip
  6. pretrain (image)  ConvMAE-tiny on the synthetic ImageNet-style folder, same CLI
then a summary table. The synthetic dataset is reused when present and written with the current generator
settings (its synth.json); runs are redone under --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "videoconvmae.cli"]


class Stage:
    """One CLI command: its output streams through (progress bars included); its wall time is kept."""

    def __init__(self, title: str, args: list[str]):
        self.title, self.args = title, args
        self.seconds = 0.0

    def run(self) -> None:
        print(f"\n=== {self.title}\n$ videoconvmae {' '.join(self.args)}", flush=True)
        start = time.perf_counter()
        code = subprocess.run([*CLI, *self.args], cwd=REPO).returncode
        self.seconds = time.perf_counter() - start
        if code != 0:
            raise SystemExit(f"demo: stage '{self.title}' failed (exit {code}); see its output above")


def first_val_clip(data: Path) -> Path:
    lines = (data / "k400" / "val.txt").read_text().split("\n")
    path = Path(lines[0].split()[0])
    return path if path.is_absolute() else data / "k400" / path


def synth_is_current(data: Path) -> bool:
    """Whether ``data`` was written by this generator version with its default settings."""
    from videoconvmae.data.synth import SYNTH_FORMAT, SynthSpec

    spec_file = data / "synth.json"
    if not (data / "k400" / "train.csv").is_file() or not spec_file.is_file():
        return False
    written = json.loads(spec_file.read_text())
    expected = json.loads(json.dumps(asdict(SynthSpec())))
    return written.get("format") == SYNTH_FORMAT and all(
        written.get(k) == v for k, v in expected.items() if k != "workers")


def k400_overrides(data: Path) -> list[str]:
    """The overrides that point a k400 preset at the synthetic dataset in ``data``."""
    return [f"data.root={data}/k400", f"data.train_annotation={data}/k400/train.csv",
            f"data.val_annotation={data}/k400/val.csv"]


def fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="where the runs go (redone each time)")
    parser.add_argument("--data", default="data/synth", help="synthetic dataset (generated when missing)")
    parser.add_argument("--fresh-data", action="store_true", help="regenerate the synthetic dataset")
    args = parser.parse_args(argv)
    out, data = Path(args.out), Path(args.data)
    started = time.perf_counter()
    write_data = args.fresh_data or not synth_is_current(data)
    if write_data and data.exists():
        shutil.rmtree(data)
    if out.exists():
        shutil.rmtree(out)
    data_root = k400_overrides(data)

    stages: dict[str, Stage] = {}
    if write_data:
        stages["synth"] = Stage("1/6 synthetic dataset", ["data", "synth", "--out", str(data)])
    stages["pretrain"] = Stage("2/6 VideoConvMAE pretraining", [
        "pretrain", "pretrain_k400_tiny", *data_root, f"train.output_dir={out}/pretrain_video"])
    stages["ft_pre"] = Stage("3/6 finetuning from the pretrained encoder", [
        "finetune", "finetune_k400_tiny", *data_root, f"model.pretrained={out}/pretrain_video/weights.pt",
        f"train.output_dir={out}/finetune_pretrained"])
    stages["ft_rand"] = Stage("3/6 finetuning from random init (same budget)", [
        "finetune", "finetune_k400_tiny", *data_root, "model.pretrained=", f"train.output_dir={out}/finetune_random"])
    stages["eval_multi"] = Stage("4/6 multi-view evaluation (5 temporal x 3 spatial)", [
        "eval", "BEST_FINETUNE", "eval_tiny", *data_root, f"eval.out_dir={out}/eval_multiview"])
    stages["eval_single"] = Stage("4/6 single-view evaluation (1 x 1)", [
        "eval", "BEST_FINETUNE", "eval_tiny", *data_root, "eval.num_temporal_views=1",
        "eval.num_spatial_views=1", f"eval.out_dir={out}/eval_singleview"])
    stages["visualize"] = Stage("5/6 reconstruction video", [
        "visualize", f"{out}/pretrain_video/weights.pt", "VAL_CLIP", "--out", f"{out}/reconstruction.mp4"])
    stages["pretrain_image"] = Stage("6/6 ConvMAE image-mode pretraining", [
        "pretrain", "pretrain_in1k_tiny", f"data.root={data}/imagenet", f"data.train_annotation={data}/imagenet/train",
        f"data.val_annotation={data}/imagenet/val", f"train.output_dir={out}/pretrain_image"])

    best = None
    for key, stage in stages.items():
        if key == "visualize":
            stage.args[2] = str(first_val_clip(data))
        if key.startswith("eval"):
            best = best or best_finetune(out)
            stage.args[1] = str(out / best / "weights.pt")
        stage.run()

    print_summary(stages, out, time.perf_counter() - started, best)
    return 0


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def loss_first_last(run: Path) -> tuple[float | None, float | None]:
    losses = [e["loss"] for e in read_jsonl(run / "metrics.jsonl") if "event" not in e and "loss" in e]
    return (losses[0], losses[-1]) if losses else (None, None)


def last_val_top1(run: Path) -> float | None:
    values = [e["val_acc1"] for e in read_jsonl(run / "metrics.jsonl") if "val_acc1" in e]
    return values[-1] if values else None


def best_finetune(out: Path) -> str:
    """The finetune run (folder name) with the higher last val top-1; the pretrained one on a tie."""
    runs = ("finetune_pretrained", "finetune_random")
    return max(runs, key=lambda r: (last_val_top1(out / r) or 0.0, r == runs[0]))


def eval_metrics(out_dir: Path) -> dict:
    path = out_dir / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def print_summary(stages: dict[str, Stage], out: Path, total: float, best: str | None) -> None:
    video, image = loss_first_last(out / "pretrain_video"), loss_first_last(out / "pretrain_image")
    multi, single = eval_metrics(out / "eval_multiview"), eval_metrics(out / "eval_singleview")
    classes = len(multi.get("class_names") or [])
    rows = [
        ("video pretrain loss (first -> last logged)", f"{fmt(video[0])} -> {fmt(video[1])}"),
        ("image pretrain loss (first -> last logged)", f"{fmt(image[0])} -> {fmt(image[1])}"),
        ("finetune val top-1 %, pretrained encoder", fmt(last_val_top1(out / "finetune_pretrained"), ".1f")),
        ("finetune val top-1 %, random init", fmt(last_val_top1(out / "finetune_random"), ".1f")),
        (f"chance % ({classes} classes)", fmt(100 / classes if classes else None, ".1f")),
        ("model evaluated below", (best or "n/a").replace("_", " ")),
        ("multi-view top-1 % (5 temporal x 3 spatial)", fmt(multi.get("top1"), ".1f")),
        ("single-view top-1 % (1 x 1)", fmt(single.get("top1"), ".1f")),
        ("reconstruction video", f"{out}/reconstruction.mp4"),
        ("logs, checkpoints, configs", f"{out}/<stage>/ (metrics.jsonl, tb/, config.yaml, weights.pt)"),
    ]
    rows += [(f"time: {s.title.split(' ', 1)[1]}", f"{s.seconds:.0f} s") for s in stages.values()]
    rows.append(("total wall time", f"{total / 60:.1f} min"))
    width = max(len(k) for k, _ in rows)
    line = "=" * (width + 50)
    print(f"\n{line}\nvideoconvmae demo summary\n{'-' * len(line)}")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(line)


if __name__ == "__main__":
    sys.exit(main())
