"""Run logging on rank 0: a tqdm progress line, JSONL metrics, TensorBoard scalars (tags ``train/*``, ``val/*``),
and ``log.txt``: the printed event lines in plain text, the researcher-readable log beside ``metrics.jsonl`` (a
crash's traceback is appended there by the CLI).

Other ranks get a logger that does nothing, so the loop calls it unconditionally.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN / inf
    return value


class RunLogger:
    def __init__(self, output_dir: str | Path, enabled: bool, total_steps: int, start_step: int = 0,
                 progress: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.dir = Path(output_dir)
        self.bar = None
        self.tb = None
        self.jsonl = self.text = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(self.dir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
        self.text = open(self.dir / "log.txt", "a")  # noqa: SIM115 (closed in close())
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, file=sys.stderr,
                            desc="train", unit="step")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.dir / "tb"))

    def event(self, name: str, **fields: Any) -> None:
        """A one-off record (start, epoch end, evaluation, stop) in the JSONL log, echoed as one line."""
        if not self.enabled:
            return
        record = {"event": name, "time": round(time.time(), 3), **{k: _plain(v) for k, v in fields.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        text = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items() if not isinstance(v, (dict, list)))
        (self.bar.write if self.bar else print)(f"[{name}] {text}")
        self.text.write(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record['time']))} [{name}] {text}\n")
        self.text.flush()
        step = fields.get("step")
        if self.tb is not None and step is not None and name == "epoch":
            for k, v in fields.items():
                if isinstance(_plain(v), (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(tb_tag(k), _plain(v), step)

    def scalars(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "time", "elapsed_s") and isinstance(v, (int, float)):
                    self.tb.add_scalar(tb_tag(k), v, step)

    def progress(self, steps: int, postfix: dict[str, Any] | None = None) -> None:
        """Advance the bar by ``steps`` (the loop calls it every step); ``postfix`` replaces the numbers shown."""
        if self.bar is not None:
            if postfix is not None:
                self.bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.jsonl is not None:
            self.jsonl.close()
            self.text.close()
        self.bar = self.tb = self.jsonl = self.text = None


def tb_tag(key: str) -> str:
    """TensorBoard tag: validation numbers under ``val/`` (``val_acc1`` -> ``val/acc1``, ``ema_val_acc1`` ->
    ``val/ema_acc1``), everything else under ``train/``."""
    if key.startswith("val_"):
        return f"val/{key[4:]}"
    if key.startswith("ema_val_"):
        return f"val/ema_{key[8:]}"
    return f"train/{key}"


def _fmt(value: Any) -> str:
    value = _plain(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
