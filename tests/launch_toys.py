"""Tiny stand-ins with the engine / eval contracts, for testing the launch plumbing in a second or two.

``toy_run_task(cfg, stop_event)`` follows ``engine.run_task``: it resumes from its state file in
``train.output_dir``, advances a deterministic chained value one step at a time (``train.max_steps`` steps of
``TOY_STEP_S`` each), and when ``stop_event`` is set writes its state atomically at the step boundary and returns
``status="stopped"``. Tests pickle this module by value (cloudpickle), so the job process needs no tests/ path.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

TOY_STEP_S = 0.4


def chained(value: int, step: int) -> int:
    return (value * 1_000_003 + step * 7919) % 2_147_483_647


def expected_value(steps: int) -> int:
    value = 1
    for step in range(1, steps + 1):
        value = chained(value, step)
    return value


def _save(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def toy_run_task(cfg, stop_event=None) -> dict:
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "toy_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"step": 0, "value": 1, "starts": 0}
    state["starts"] += 1
    state["restart_count"] = os.environ.get("SLURM_RESTART_COUNT", "0")
    _save(state_path, state)
    total = int(cfg.train.max_steps or 1)
    while state["step"] < total:
        time.sleep(TOY_STEP_S)  # "the step"; a signal during it only sets stop_event
        state["step"] += 1
        state["value"] = chained(state["value"], state["step"])
        _save(state_path, state)
        if stop_event is not None and stop_event.is_set() and state["step"] < total:
            return {"status": "stopped", "step": state["step"], "checkpoint": str(state_path)}
    return {"status": "completed", "step": state["step"], "value": state["value"], "starts": state["starts"],
            "lr": cfg.optim.base_lr, "checkpoint": str(state_path)}


def toy_failing_task(cfg, stop_event=None) -> dict:
    raise FileNotFoundError(f"data.root: folder {cfg.data.root!r} does not exist")


def toy_failing_on_rank_1(cfg, stop_event=None) -> dict:
    if os.environ.get("RANK") == "1":
        raise ValueError("rank 1 could not read its shard")
    return {"status": "completed", "step": 0, "rank": os.environ.get("RANK"), "world": os.environ.get("WORLD_SIZE")}


def toy_eval(cfg) -> dict:
    """``run_eval``'s contract in miniature: counts its starts, takes a few seconds, returns its out_dir."""
    out = Path(cfg.eval.out_dir or Path(cfg.train.output_dir) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    starts = out / "starts"
    n = int(starts.read_text()) + 1 if starts.exists() else 1
    starts.write_text(str(n))
    for _ in range(int(cfg.train.max_steps or 1)):
        time.sleep(TOY_STEP_S)
    return {"out_dir": str(out), "starts": n}
