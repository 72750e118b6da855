"""The step loop: one generic loop for pretraining, finetuning and linear probing.

It knows a model, a loss function ``loss_fn(model, batch) -> (loss, extras)``, a dataset, an optional
evaluation hook and the run config — never the task's details, never Slurm. Everything about a step is a
function of the step number: epoch = step // steps_per_epoch and the position in the epoch follows, so a
resumed run continues with exactly the next batch, the same RNG states and the same schedule.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from videoconvmae.config import Config, code_version, save_config, to_dict
from videoconvmae.data.seeding import SeededItems, seed_everything
from videoconvmae.engine import checkpoint as ckpt_io
from videoconvmae.engine import fsdp
from videoconvmae.engine.distributed import DistInfo, all_reduce_sum, barrier, broadcast_object, gather_objects
from videoconvmae.engine.logging import RunLogger
from videoconvmae.engine.optim import LrPlan, build_optimizer, build_scheduler, current_lr, plan_lr
from videoconvmae.engine.resume import check_resume_config, config_changes, describe_changes
from videoconvmae.engine.rundir import RunLock, claim_folder, remove_stale_temp_files
from videoconvmae.engine.sampler import ResumableSampler
from videoconvmae.errors import ConfigError

LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


@dataclass
class TaskParts:
    """What a task hands the loop."""

    model: nn.Module  # the module whose state is trained and saved (unwrapped)
    train_set: Dataset  # items -> collate_fn -> batch dict with "input" (and "label", "skips")
    loss_fn: LossFn  # (model to call, batch on device) -> (scalar loss, extra scalars to log)
    collate_fn: Callable | None = None  # DataLoader collate
    evaluate: Callable[[nn.Module], dict] | None = None  # model -> metrics (called on every rank)
    generators: dict[str, torch.Generator] = field(default_factory=dict)  # saved / restored with the RNG
    train_mode: Callable[[nn.Module], None] | None = None  # sets train/eval modes (linprobe: frozen encoder)
    skip_stats: Any = None  # data.SkipStats: update(batch), as_dict(), summary(), check(max_fraction), state
    ema: Any = None  # timm ModelEmaV3 (or alike): update(model, step), .module
    find_unused_parameters: bool = False  # the task knows some trainable parameters get no gradient (DDP)
    export_state: Callable[[nn.Module], dict] | None = None  # model -> state for weights.pt (default: state_dict)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: (_to_device(v, device) if k != "skips" else v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_fsdp(cfg: Config, parts: TaskParts, device: torch.device) -> None:
    """What ``train.parallel=fsdp`` does not cover yet, as one line (rather than a hang or a wrong export)."""
    if cfg.train.fsdp_cpu_offload and device.type != "cuda":
        raise ConfigError(f"train.fsdp_cpu_offload: offloads accelerator memory to the CPU and needs a CUDA "
                          f"device (FSDP2's CPUOffloadPolicy); this run is on {device.type}")
    unsupported = [name for name, present in (("in-training evaluation", parts.evaluate is not None),
                                              ("EMA", parts.ema is not None),
                                              ("a custom weights export (linprobe)", parts.export_state is not None))
                   if present]
    if unsupported:
        raise ConfigError(f"train.parallel=fsdp: supported for pretrain runs; task={cfg.task} uses "
                          f"{', '.join(unsupported)} (use train.parallel=ddp)")


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA device (loss scaling); use train.precision=bf16 "
                          "on CPU")


class Trainer:
    def __init__(self, cfg: Config, parts: TaskParts, dist_info: DistInfo) -> None:
        """Takes the output folder's run lock (released by ``fit`` / ``close``), then builds and resumes."""
        self.cfg, self.dist, self.out = cfg, dist_info, Path(cfg.train.output_dir)
        self.lock = RunLock(self.out)
        self.notes = self._claim_output_dir()
        try:
            self._setup(cfg, parts, dist_info)
        except BaseException:
            self.close()
            raise

    def _claim_output_dir(self) -> list[str]:
        """Rank 0 locks the folder, refuses another run's folder, removes a killed writer's temp files; every
        rank gets the same verdict (a refusal on rank 0 alone would leave the others waiting forever)."""
        notes: list[str] = []
        error = ""
        if self.dist.is_main:
            try:
                self.lock.acquire()
                tc = self.cfg.train
                notes = [self.lock.taken_over, claim_folder(self.out, tc.resume, tc.overwrite),
                         *[f"removed {p.name} (left by a killed writer)" for p in remove_stale_temp_files(self.out)]]
            except ConfigError as e:
                self.lock.release()
                error = str(e)
        error = broadcast_object(error)
        if error:
            raise ConfigError(error)
        return [n for n in notes if n]

    def close(self) -> None:
        """Release the output folder (idempotent)."""
        self.lock.release()

    def _setup(self, cfg: Config, parts: TaskParts, dist_info: DistInfo) -> None:
        self.parts = parts
        check_precision(cfg.train.precision, dist_info.device)
        tc, oc = cfg.train, cfg.optim
        self.model = parts.model.to(dist_info.device)  # built by the task (models.build_model: grad checkpointing)
        # fsdp: DCP checkpoints always; sharding needs 2+ processes (one process trains the plain model, which
        # resumes from and writes the same DCP folders)
        self.fsdp = tc.parallel == "fsdp"
        if self.fsdp:
            check_fsdp(cfg, parts, dist_info.device)
            if dist_info.distributed:
                fsdp.shard_model(self.model, tc.precision, tc.fsdp_cpu_offload)  # before the optimizer sees it

        self.batch_size, self.accum = cfg.data.batch_size, oc.accum_steps
        self.sampler = ResumableSampler(len(parts.train_set), dist_info.rank, dist_info.world_size, shuffle=True,
                                        seed=tc.seed)
        self.steps_per_epoch = self.sampler.num_per_rank // (self.batch_size * self.accum)
        if self.steps_per_epoch < 1:
            raise ConfigError(f"data.batch_size={self.batch_size} x optim.accum_steps={self.accum} x "
                              f"{dist_info.world_size} processes is more than the {len(parts.train_set)} training "
                              "items: not one optimizer step per epoch")
        self.plan: LrPlan = plan_lr(oc, self.batch_size, dist_info.world_size, self.steps_per_epoch)
        self.total_steps = self.plan.total_steps if tc.max_steps is None else min(tc.max_steps,
                                                                                  self.plan.total_steps)
        self.optimizer = build_optimizer(self.model, oc, self.plan.lr)
        self.scheduler = build_scheduler(self.optimizer, oc, self.plan)
        self.scaler = torch.amp.GradScaler("cuda", enabled=tc.precision == "fp16")
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_run = 0
        self.items = SeededItems(parts.train_set, tc.seed)
        self.best_val_acc1: float | None = None  # the best validation top-1 so far (weights_best.pt holds it)
        self.resumed_from: str | None = None
        self.own_checkpoints: list[Path] = []  # this run's valid checkpoints: the only ones pruning may delete
        self.resume_changes: list[tuple[str, Any, Any]] = []
        self._resume()

        wrapped: nn.Module = self.model
        if dist_info.distributed and not self.fsdp:
            ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
            wrapped = DistributedDataParallel(self.model, device_ids=ids,
                                              find_unused_parameters=tc.find_unused_parameters or
                                              parts.find_unused_parameters)
        self.ddp = wrapped if wrapped is not self.model else None
        self.forward_model = torch.compile(wrapped) if tc.compile else wrapped

    # ------------------------------------------------------------------------------------------- state
    def _rng_all_ranks(self) -> list[dict]:
        """Per-rank state: RNG streams (and the rank's data skip counts, kept beside them)."""
        mine = ckpt_io.rng_state(self.parts.generators)
        if self.parts.skip_stats is not None:
            mine["skip_stats"] = self.parts.skip_stats.state_dict()
        return gather_objects(mine)

    def state_dict(self) -> dict:
        epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": epoch,
            "epoch_position": in_epoch * self.batch_size * self.accum,
            "sampler": {"epoch": epoch, "position": in_epoch * self.batch_size * self.accum,
                        "seed": self.sampler.seed, "world_size": self.dist.world_size},
            "rng": {"world_size": self.dist.world_size, "ranks": self._rng_all_ranks()},
            "nonfinite_steps": self.nonfinite_total,
            "best_val_acc1": self.best_val_acc1,
            "config": to_dict(self.cfg),
            "code_version": code_version(),
        }
        if self.parts.ema is not None:
            state["ema"] = self.parts.ema.module.state_dict()
        return state

    def save_checkpoint(self) -> Path:
        """Every rank takes part (RNG gather); rank 0 writes (fsdp: every rank writes its shard)."""
        state = self.state_dict()
        if self.fsdp:
            for key in ("model", "optimizer"):  # in the DCP shards instead
                state.pop(key)
            return fsdp.save_checkpoint(self.out, self.step, self.model, self.optimizer, state,
                                        self.cfg.train.keep_last)
        path = ckpt_io.checkpoint_path(self.out, self.step)
        if self.dist.is_main:
            try:
                ckpt_io.atomic_torch_save(state, path)
            except OSError as e:
                kept = self.own_checkpoints[0].name if self.own_checkpoints else "none"
                raise RuntimeError(f"could not write checkpoint {path}: {e} (the previous checkpoint, {kept}, is "
                                   "intact)") from e
            self.own_checkpoints = ckpt_io.prune_checkpoints([path, *self.own_checkpoints], self.cfg.train.keep_last)
        barrier()
        return path

    def _resume(self) -> None:
        mode = self.cfg.train.resume
        if mode == "none":
            return
        # The optimizer's hyper-parameters (lr, betas, weight decay, layer scales) come from this run's config,
        # its moments from the checkpoint; the schedule is a function of config and step, so it is rebuilt,
        # never restored (a restored one keeps the old base lr and length: new steps past its end run at lr 0).
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        if self.fsdp:
            self._resume_dcp(mode, hyper)
            return
        if mode == "auto":
            found = ckpt_io.find_resume(self.out)
            if found is None:
                self._check_no_other_format()
                damaged = ckpt_io.list_checkpoints(self.out)
                if damaged:  # starting over from step 0 here would silently throw the run away
                    raise ConfigError(f"train.resume=auto: none of the {len(damaged)} checkpoints in {self.out} "
                                      f"loads (newest: {damaged[0].name}); move them away to start over, or "
                                      "replace the run with train.resume=none train.overwrite=true")
                return
            path, ckpt = found
        else:
            path = Path(mode)
            if not path.is_file():
                raise ConfigError(f"train.resume: checkpoint {mode!r} does not exist")
            try:
                ckpt = ckpt_io.load_checkpoint(path)
            except Exception as e:
                raise ConfigError(f"train.resume: cannot load {mode}: {str(e).splitlines()[0]}") from None
        self._check_fits(path, ckpt)
        self.resume_changes = check_resume_config(str(path), ckpt["config"], to_dict(self.cfg),
                                                  self.cfg.train.resume_changes)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self._restore(path, ckpt, hyper)

    def _resume_dcp(self, mode: str, hyper: list[dict]) -> None:
        """fsdp: the newest complete ``checkpoint-<step>.dcp`` (auto) or the given folder; resharded on load."""
        if mode == "auto":
            found = broadcast_object(fsdp.find_resume(self.out))  # every rank loads the same one
            if found is None:
                self._check_no_other_format()
                return
            path = Path(found)
        else:
            path = Path(mode)
            if not fsdp.is_complete(path):
                raise ConfigError(f"train.resume: {mode!r} is not a complete DCP checkpoint folder (.metadata "
                                  f"and {fsdp.STATE_FILE}; train.parallel=fsdp resumes from checkpoint-*.dcp)")
        ckpt = fsdp.load_checkpoint(path, self.model, self.optimizer)
        if "config" in ckpt:
            self.resume_changes = check_resume_config(str(path), ckpt["config"], to_dict(self.cfg),
                                                      self.cfg.train.resume_changes)
        self._restore(path, ckpt, hyper)

    def _check_no_other_format(self) -> None:
        """resume=auto found nothing: refuse to start over beside checkpoints of the other train.parallel."""
        other = ckpt_io.list_checkpoints(self.out) if self.fsdp else fsdp.list_dcp_checkpoints(self.out)
        if other:
            mine, theirs = ("fsdp", "ddp") if self.fsdp else ("ddp", "fsdp")
            raise ConfigError(f"train.resume=auto: {self.out} holds {other[0].name} from a train.parallel={theirs} "
                              f"run, which train.parallel={mine} cannot resume; use train.parallel={theirs} or "
                              "another train.output_dir")

    def _restore(self, path: Path, ckpt: dict, hyper: list[dict]) -> None:
        """After the model and optimizer state: this run's optimizer ``hyper``-parameters back on the loaded
        groups, then scaler, EMA, step, skip counts, RNG streams (the schedule is rebuilt, see ``_resume``)."""
        for group, values in zip(self.optimizer.param_groups, hyper, strict=True):
            group.update(values)
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.parts.ema is not None and "ema" in ckpt:
            self.parts.ema.module.load_state_dict(ckpt["ema"])
        self.step = int(ckpt["step"])
        self.nonfinite_total = int(ckpt.get("nonfinite_steps", 0))
        self.best_val_acc1 = ckpt.get("best_val_acc1")
        rng = ckpt["rng"]
        if rng.get("world_size") == self.dist.world_size:
            mine = rng["ranks"][self.dist.rank]
            ckpt_io.set_rng_state(mine, self.parts.generators)
            if self.parts.skip_stats is not None and "skip_stats" in mine:
                self.parts.skip_stats.load_state_dict(mine["skip_stats"])
        else:
            warnings.warn(f"{path}: saved with {rng.get('world_size')} processes, resuming with "
                          f"{self.dist.world_size}: RNG streams are reseeded (data order is unchanged)",
                          stacklevel=2)
            seed_everything(self.cfg.train.seed + self.dist.rank + 7919 * self.step)
        self.resumed_from = str(path)
        if path.parent.resolve() == self.out.resolve():
            self.own_checkpoints = [p for p in ckpt_io.list_checkpoints(self.out)
                                    if ckpt_io.checkpoint_step(p) <= self.step]

    def _check_fits(self, path: Path, ckpt: dict) -> None:
        """The checkpoint's model and optimizer state fit this run's, or one line naming what differs."""
        mine, theirs = self.model.state_dict(), ckpt["model"]
        other = [f"{k} {tuple(theirs[k].shape)} vs {tuple(v.shape)}" for k, v in mine.items()
                 if k in theirs and tuple(theirs[k].shape) != tuple(v.shape)]
        missing, unexpected = [k for k in mine if k not in theirs], [k for k in theirs if k not in mine]
        saved_groups = [len(g["params"]) for g in ckpt["optimizer"].get("param_groups", [])]
        groups_differ = saved_groups != [len(g["params"]) for g in self.optimizer.param_groups]
        old_optim = ckpt["config"].get("optim", {}).get("name", self.cfg.optim.name)
        if old_optim != self.cfg.optim.name:  # another optimizer's state (moments vs momentum) cannot carry over
            groups_differ = True
        if not (other or missing or unexpected or groups_differ):
            return
        what = [f"{len(other)} tensors of another shape (e.g. {other[0]})" if other else "",
                f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                "another optimizer or other parameter groups" if groups_differ else ""]
        recipe, _ = config_changes(ckpt["config"], to_dict(self.cfg))
        keys = [c for c in recipe if c[0].startswith(("model.", "optim.", "task"))] or recipe
        raise ConfigError(f"train.resume: {path} does not fit this run ({'; '.join(w for w in what if w)}"
                          f"{'; the config differs in ' + describe_changes(keys) if keys else ''}); start fresh "
                          "with a new train.output_dir (or train.resume=none train.overwrite=true)")

    # ------------------------------------------------------------------------------------------- loop
    def loader(self, epoch: int, in_epoch_steps: int) -> DataLoader:
        """The training batches of ``epoch`` from step ``in_epoch_steps`` on (bench/bench_data.py measures it)."""
        self.sampler.set_epoch(epoch, in_epoch_steps * self.batch_size * self.accum)
        self.items.epoch = epoch
        nw = self.cfg.data.num_workers
        # A dedicated generator: creating the iterator must not draw from the global RNG (resume exactness).
        gen = torch.Generator().manual_seed(self.cfg.train.seed * 7919 + epoch * 31 + self.dist.rank)
        return DataLoader(self.items, batch_size=self.batch_size, sampler=self.sampler, num_workers=nw,
                          collate_fn=self.parts.collate_fn, drop_last=True, generator=gen,
                          pin_memory=self.dist.device.type == "cuda", persistent_workers=False,
                          prefetch_factor=2 if nw > 0 else None)

    def _train_mode(self) -> None:
        if self.parts.train_mode is not None:
            self.parts.train_mode(self.model)
        else:
            self.model.train()

    def _train_step(self, batches) -> dict:
        """One optimizer step over ``accum`` micro-batches; returns scalars (loss, lr, grad_norm, clips)."""
        tc, oc = self.cfg.train, self.cfg.optim
        self.scheduler.step_update(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        losses, clips, extras = [], 0, {}
        for k in range(self.accum):
            batch = next(batches)
            if self.parts.skip_stats is not None and "skips" in batch:
                self.parts.skip_stats.update(batch)
            if isinstance(batch, dict) and "index" in batch:
                batch["sample_seed"] = self.items.row_seeds(batch["index"])
            batch = _to_device(batch, self.dist.device)
            clips += len(batch["input"])
            last = k == self.accum - 1
            sync = contextlib.nullcontext()
            if not last and self.ddp is not None:
                sync = self.ddp.no_sync()
            elif not last and fsdp.is_sharded(self.model):
                sync = fsdp.no_gradient_sync(self.model)
            with sync:
                with autocast_for(tc.precision, self.dist.device):
                    loss, extra = self.parts.loss_fn(self.forward_model, batch)
                self.scaler.scale(loss.float() / self.accum).backward()
            losses.append(loss.detach().float())
            for key, v in extra.items():
                extras[key] = extras.get(key, 0.0) + float(v) / self.accum
        loss = torch.stack(losses).mean()
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        max_norm = oc.clip_grad if oc.clip_grad is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else loss.new_zeros(())
        grad_norm = fsdp.full_value(grad_norm)  # fsdp: the norm over every shard
        # Ranks agree on skipping (a rank's NaN loss must not let the others step).
        # fp16: an overflowing gradient is the scaler's business (it skips the step and lowers the scale).
        bad_grad = loss.new_zeros(()) if self.scaler.is_enabled() else (~torch.isfinite(grad_norm)).float()
        stats = self.parts.skip_stats
        reads = [float(stats.items), float(stats.skipped)] if stats is not None else [0.0, 0.0]
        flags = torch.cat([torch.stack([(~torch.isfinite(loss)).float(), bad_grad.to(loss.device),
                                        loss.nan_to_num(0.0, 0.0, 0.0)]),
                           torch.tensor(reads, device=loss.device)]).to(self.dist.device)
        all_reduce_sum(flags)
        if stats is not None:  # every rank sees the run's totals, so all stop together
            stats.check(self.cfg.data.max_skip_fraction, self.cfg.data.skip_check_min_reads,
                        totals=(int(flags[3]), int(flags[4])))
        skipped = bool(flags[0] > 0 or flags[1] > 0)
        finite_ranks = self.dist.world_size - int(flags[0])
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.update()
            self.nonfinite_total += 1
            self.nonfinite_run += 1
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.nonfinite_run = 0
            if not self._weights_finite():
                raise NonFiniteLossError(
                    f"step {self.step + 1}: the weights became non-finite in the optimizer step (lr "
                    f"{current_lr(self.optimizer):.4g}); nothing was exported; lower optim.lr or set "
                    "optim.clip_grad and resume from the last checkpoint")
            if self.parts.ema is not None:
                self.parts.ema.update(self.model, step=self.step)
        # A skipped step logs NaN when no rank had a finite loss, never a made-up 0.0.
        loss_mean = float(flags[2]) / finite_ranks if finite_ranks else float("nan")
        return {"loss": float(loss), "loss_mean": loss_mean,
                "lr": current_lr(self.optimizer), "grad_norm": float(grad_norm), "clips": clips, "skipped": skipped,
                **extras}

    @torch.no_grad()
    def _weights_finite(self) -> bool:
        """One sum per trained tensor (NaN / inf propagate into it): cheap next to a step."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        return bool(torch.stack([p.sum() for p in params]).sum().isfinite()) if params else True

    def _stop_requested(self, stop_event: threading.Event | None) -> bool:
        flag = torch.tensor([1.0 if stop_event is not None and stop_event.is_set() else 0.0],
                            device=self.dist.device)
        return bool(all_reduce_sum(flag)[0] > 0)

    def _epoch_end(self, epoch: int, log: RunLogger) -> dict:
        metrics: dict[str, Any] = {}
        stats = self.parts.skip_stats
        if stats is not None:
            totals = stats.as_dict()
            if self.dist.distributed:
                gathered = gather_objects(totals)
                totals = {k: sum(t.get(k, 0) for t in gathered) for k in sorted(set().union(*gathered))}
            metrics.update(totals)
            log.event("data", step=self.step, summary=stats.summary() + (" (rank 0)" if self.dist.distributed
                                                                          else ""))
            stats.check(self.cfg.data.max_skip_fraction)
        last_epoch = (epoch + 1) * self.steps_per_epoch >= self.total_steps
        if self.parts.evaluate is not None and ((epoch + 1) % self.cfg.train.eval_every_epochs == 0 or last_epoch):
            metrics.update(self.evaluate())
            self._keep_best(metrics, log)
        log.event("epoch", epoch=epoch, step=self.step, nonfinite_steps=self.nonfinite_total, **metrics)
        return metrics

    def _keep_best(self, metrics: dict, log: RunLogger) -> None:
        """``weights_best.pt`` / ``.safetensors`` beside ``weights.pt``: the weights of the best val top-1 so far."""
        acc1 = metrics.get("val_acc1")
        if acc1 is None or (self.best_val_acc1 is not None and acc1 <= self.best_val_acc1):
            return
        self.best_val_acc1 = float(acc1)
        if self.dist.is_main:
            export = self.parts.export_state or (lambda m: m.state_dict())
            config = {**to_dict(self.cfg), "best": {"step": self.step, "val_acc1": acc1,
                                                    "val_acc5": metrics.get("val_acc5")}}
            ckpt_io.export_weights(export(self.model), config, self.out, stem="weights_best")
        log.event("best", step=self.step, val_acc1=acc1)

    def evaluate(self) -> dict:
        metrics = dict(self.parts.evaluate(self.model))
        if self.parts.ema is not None:
            metrics.update({f"ema_{k}": v for k, v in self.parts.evaluate(self.parts.ema.module).items()})
        self._train_mode()
        return metrics

    def fit(self, stop_event: threading.Event | None = None) -> dict:
        tc = self.cfg.train
        log = RunLogger(self.out, self.dist.is_main, self.total_steps, self.step, tc.progress, tc.tensorboard)
        if self.dist.is_main:
            save_config(self.cfg, self.out / "config.yaml")
        n_params = sum(p.numel() for p in self.model.parameters())
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        log.event("start", task=self.cfg.task, step=self.step, effective_batch=self.plan.effective_batch,
                  lr=self.plan.lr, steps_per_epoch=self.plan.steps_per_epoch, total_steps=self.total_steps,
                  warmup_steps=self.plan.warmup_steps, min_lr=self.plan.min_lr, world_size=self.dist.world_size,
                  params=n_params, trainable_params=n_train, resumed_from=self.resumed_from or "",
                  code_version=code_version())
        for note in self.notes:
            log.event("output_dir", note=note)
        if self.resume_changes:
            log.event("resume_changes", step=self.step, changes=describe_changes(self.resume_changes))
        status, metrics, last_ckpt = "completed", {}, None
        window_t, window_clips, window_steps, window_losses = time.perf_counter(), 0, 0, []
        start_t = time.time()
        self._train_mode()
        try:
            while self.step < self.total_steps:
                epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
                batches = iter(self.loader(epoch, in_epoch))
                for _ in range(in_epoch, self.steps_per_epoch):
                    out = self._train_step(batches)
                    self.step += 1
                    window_clips += out["clips"] * self.dist.world_size
                    window_steps += 1
                    if not out["skipped"]:
                        window_losses.append(out["loss_mean"])
                    log.progress(1)
                    if self.nonfinite_run >= tc.max_nonfinite_steps:
                        raise NonFiniteLossError(
                            f"stopping: {self.nonfinite_run} consecutive steps with a non-finite loss or gradient "
                            f"(step {self.step}, {self.nonfinite_total} in total; train.max_nonfinite_steps="
                            f"{tc.max_nonfinite_steps}); try a lower lr, optim.clip_grad, or train.precision=bf16")
                    if self.step % tc.log_every_steps == 0 or self.step == self.total_steps:
                        dt = max(time.perf_counter() - window_t, 1e-9)
                        loss_avg = sum(window_losses) / len(window_losses) if window_losses else float("nan")
                        log.scalars(self.step, {"time": round(time.time(), 3),
                                                "elapsed_s": round(time.time() - start_t, 3),
                                                "loss": out["loss_mean"], "loss_avg": loss_avg, "lr": out["lr"],
                                                "grad_norm": out["grad_norm"], "clips_per_s": window_clips / dt,
                                                "epoch": epoch, "nonfinite_steps": self.nonfinite_total,
                                                **{k: v for k, v in out.items()
                                                   if k not in ("loss", "loss_mean", "lr", "grad_norm", "clips",
                                                                "skipped")}})
                        log.progress(0, {"loss": loss_avg, "lr": out["lr"], "clips/s": window_clips / dt})
                        window_t, window_clips, window_steps, window_losses = time.perf_counter(), 0, 0, []
                    metrics["loss"] = out["loss_mean"]
                    if self._stop_requested(stop_event):
                        last_ckpt = self.save_checkpoint()
                        status = "stopped"
                        log.event("stopped", step=self.step, checkpoint=str(last_ckpt))
                        return self._result(status, last_ckpt, metrics)
                    if self.step % tc.ckpt_every_steps == 0:
                        last_ckpt = self.save_checkpoint()
                    if self.step >= self.total_steps:
                        break
                del batches
                if self.step % self.steps_per_epoch == 0 or self.step >= self.total_steps:
                    metrics.update(self._epoch_end(epoch, log))
            if last_ckpt is None or not last_ckpt.name.startswith(f"checkpoint-{self.step:08d}."):
                last_ckpt = self.save_checkpoint()
            full = fsdp.full_state_dict(self.model) if fsdp.is_sharded(self.model) else None  # every rank gathers
            if self.dist.is_main:
                export = self.parts.export_state or (lambda m: m.state_dict())
                models = [("weights", self.model)] + ([("weights_ema", self.parts.ema.module)]
                                                      if self.parts.ema is not None else [])
                for stem, module in models:
                    state = full if (full is not None and stem == "weights") else export(module)
                    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
                    if bad:
                        raise NonFiniteLossError(f"step {self.step}: {len(bad)} tensors of the {stem} are not "
                                                 f"finite (e.g. {bad[0]}); not exported")
                    ckpt_io.export_weights(state, to_dict(self.cfg), self.out, stem=stem)
            log.event("done", step=self.step, checkpoint=str(last_ckpt), nonfinite_steps=self.nonfinite_total)
            return self._result(status, last_ckpt, metrics)
        finally:
            log.close()
            self.close()

    def _result(self, status: str, ckpt: Path | None, metrics: dict) -> dict:
        return {"status": status, "step": self.step, "checkpoint": str(ckpt) if ckpt else None,
                "nonfinite_steps": self.nonfinite_total, "output_dir": str(self.out),
                "effective_batch": self.plan.effective_batch, "lr": self.plan.lr, **metrics}
