"""The training engine: one loop for SAIL, UTA and fine-tuning (a ``Task`` plugs in).

Per step: learning rate from the schedule (steps or time budget), forward under the run's
precision, the loss summed over ranks and watched for non-finite values on the device, backward
(loss-scaled under fp16, through DDP under torchrun: see ``task.py`` for the share convention),
clipping after unscaling, the learning guard, the optimiser step. The host syncs only on the
first steps and on logging, evaluation and checkpoint steps (and every step under fp16, whose
scaler syncs anyway), where the watch is checked: a non-finite step never reaches a checkpoint.
Logged steps go to ``metrics.jsonl`` and the trackers (rank 0); checkpoints are atomic and a
resumed run equals an uninterrupted one bit for bit. Training time counts waiting for data and
the step itself; evaluation and checkpoints do not.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from vlalign.train.config import TrainSettings
from vlalign.train.guards import FiniteWatch, LearningGuard, SkipCounter
from vlalign.train.optim import LR_SCALE, create_optimizer
from vlalign.train.precision import Precision
from vlalign.train.run import RunDir
from vlalign.train.schedule import Schedule
from vlalign.train.task import StepOutput, Task
from vlalign.train.trackers import create_trackers
from vlalign.utils.distributed import all_reduce_sum, on_rank_zero, world_info

log = logging.getLogger(__name__)
Evaluator = Callable[[int], dict[str, float]]
GUARD_EVERY_STEP_UNTIL = 20  # the learning guard checks each of the first steps, then log steps


def _wrap(module: nn.Module, compile_module: bool, world_size: int,
          device: torch.device) -> nn.Module:
    """The callable a step runs: compiled if asked, inside DDP under torchrun."""
    runner = torch.compile(module) if compile_module else module
    if world_size > 1:
        runner = DistributedDataParallel(
            runner, device_ids=[device.index] if device.type == "cuda" else None)
    return runner


def _global_values(out: StepOutput) -> dict[str, torch.Tensor]:
    """Loss and terms summed over ranks (shares -> global values), in one all_reduce."""
    named = {"loss": out.loss, **out.terms}
    values = all_reduce_sum(torch.stack([v.detach().float() for v in named.values()]))
    return dict(zip(named, values))


def fit(task: Task, settings: TrainSettings, run: RunDir, config: dict[str, Any], *,
        evaluate: Evaluator | None = None, progress: bool = True,
        max_steps: int | None = None) -> dict[str, Any]:
    """Train ``task`` in ``run`` (resuming it if asked) and export it; returns the last logged
    metrics. ``config`` is the resolved recipe saved with the run; ``evaluate(step)`` runs on
    rank 0 at ``eval_every`` and at the end; ``max_steps`` stops early (the schedule still spans
    the whole run)."""
    rank, world_size = world_info()
    optim, module = settings.optim, task.module
    precision = Precision(settings.precision, task.device)
    optimizer = create_optimizer(optim.name, module.named_parameters(), optim.lr,
                                 optim.weight_decay, (optim.beta1, optim.beta2), optim.eps,
                                 task.no_weight_decay())
    start = run.restore(module, optimizer, precision, config, task.identity())
    schedule = Schedule(task.steps_per_epoch, settings.epochs, settings.time_budget_s, max_steps)
    runner = _wrap(module, settings.compile, world_size, task.device)
    params = [p for p in module.parameters() if p.requires_grad]
    guard = LearningGuard(task.watched_parameters(), settings.learning_guard_steps,
                          precision.name)
    skips, watch = SkipCounter(), FiniteWatch(task.device)
    trackers = []
    if rank == 0:
        trackers = create_trackers(settings.report_to, run.path, config, run.resume)
    log.info("%s: precision %s -> %s on %s, %d process(es)", task.name, settings.precision,
             precision.name, task.device, world_size)
    bar = tqdm(total=schedule.stop if schedule.bounded else None, initial=start.step,
               disable=not progress or rank != 0, unit="step", desc=task.name,
               dynamic_ncols=True)
    train_s, last_good, metrics = start.train_s, start.last_good, run.last_metrics()
    module.train()
    with run.metrics_sink() as sink:
        waited = time.perf_counter()
        for step, batch in enumerate(task.batches(start.step, schedule.stop), start=start.step):
            data_s = time.perf_counter() - waited
            began = time.perf_counter()
            lr = schedule.lr(step, train_s, optim.lr, optim.warmup_fraction,
                             optim.min_lr_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get(LR_SCALE, 1.0)  # layer-wise decay's scales
            with precision.autocast():
                out = runner(batch)
            reduced = _global_values(out)
            watch.record(step, "loss", reduced["loss"])
            optimizer.zero_grad(set_to_none=True)
            precision.backward(out.loss * world_size, optimizer)
            grad_norm = nn.utils.clip_grad_norm_(params, optim.grad_clip or math.inf)
            if precision.scaler is None:  # fp16's scaler skips non-finite steps itself
                watch.record(step, "gradient norm", grad_norm)
            done = step + 1
            logged = done % settings.log_every == 0
            # Host syncs only here: fp16's scaler syncs each step anyway; otherwise the first
            # steps and logging steps (and checkpoint/evaluation steps, below).
            checked = precision.scaler is not None or step < GUARD_EVERY_STEP_UNTIL or logged
            if checked:
                watch.check(last_good)
                if precision.scaler is None or bool(torch.isfinite(grad_norm)):
                    guard.observe(step)
            applied = precision.step(optimizer)
            skips.record(applied, step, last_good)
            if applied:
                task.after_step()
            step_s = data_s + time.perf_counter() - began
            if schedule.budget and world_size > 1:  # every rank must see the same clock
                step_s = float(all_reduce_sum(torch.tensor([step_s])) / world_size)
            train_s += step_s
            final = done == schedule.stop or schedule.out_of_time(train_s)
            evaluate_now = evaluate is not None and (
                final or (settings.eval_every and done % settings.eval_every == 0))
            checkpoint_now = done % settings.checkpoint_every == 0 or final
            if not checked and (evaluate_now or checkpoint_now):
                watch.check(last_good)
            if logged or final or evaluate_now:
                metrics = {"step": done, "epoch": round(done / task.steps_per_epoch, 4),
                           "lr": lr, **{k: float(v) for k, v in reduced.items()},
                           "grad_norm": float(grad_norm),
                           f"{task.unit}_per_s": task.samples_per_step / max(1e-9, step_s),
                           "data_s": round(data_s, 4), "compute_s": round(step_s - data_s, 4),
                           "train_s": round(train_s, 2), **task.batch_metrics(batch)}
                if precision.scaler is not None:
                    metrics |= {"loss_scale": precision.scaler.get_scale(),
                                "skipped_steps": skips.total}
                if evaluate_now and rank == 0:
                    module.eval()
                    metrics |= {f"val/{k}": v for k, v in evaluate(done).items()}
                    module.train()
                sink.write(json.dumps(metrics) + "\n")
                sink.flush()
                for tracker in trackers:
                    tracker.log(metrics, done)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", data=f"{data_s:.2f}s",
                                step=f"{step_s - data_s:.2f}s", refresh=False)
            if checkpoint_now:
                run.save(done, train_s, module, optimizer, precision)
                last_good = done
            bar.update(1)
            if final:
                break
            waited = time.perf_counter()
    bar.close()
    for tracker in trackers:
        tracker.close()
    finished = {"step": last_good or start.step, "train_s": round(train_s, 2)}
    module.eval()
    on_rank_zero(lambda: task.export(run.path, finished["step"], finished))
    return metrics
