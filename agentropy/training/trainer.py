"""The training loop, read top to bottom.

    collect (+ ArbEPO's regularisation episodes at T_k) -> rewards -> recompute old log-probs
            and entropies -> advantages -> mini-batch updates on reply tokens -> replay (SPEAR)
            -> metrics -> eval -> checkpoint

The same code runs single-process on a CPU and as several processes under
``accelerate launch`` (DDP on CPU or GPUs, FSDP via accelerate's config): each process rolls
out its share of the tasks with its own generation backend, advantages are computed where
whole groups live (a group never spans processes), and gradients are averaged by the
accelerator. Every process takes the same number of optimizer steps.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentropy.configuration import save as save_config
from agentropy.configuration import to_dict
from agentropy.nonfinite import NonFiniteError, nonfinite_tensors
from agentropy.training import checkpoint as ckpt
from agentropy.training.config import Config, check_trainable
from agentropy.training.evaluation import evaluate_policy
from agentropy.training.methods.aepo_rollout import branching_from_config, collect_branching
from agentropy.training.methods.arbepo import (
    mark_regularization,
    regularization_rollout_config,
    select_regularization_tasks,
)
from agentropy.training.model_setup import build_backend, load_policy, resolve_device
from agentropy.training.policy_update import UpdateState, iteration_update
from agentropy.training.rollout import (
    TaskSpec,
    close_shared_pools,
    collect,
    resolve_config,
    run_seed,
    shared_pool,
)
from agentropy.training.run_folder import record_resume, run_identity, start_run
from agentropy.training.run_log import RunLog
from agentropy.training.sft import collect_demonstrations, train_sft
from agentropy.training.tool_metrics import merge_tool_metrics
from agentropy.training.trajectory import Trajectory, write_jsonl


@dataclass
class TrainResult:
    run_dir: Path
    sft_success: float | None
    final_success: float | None
    iterations: int


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_tasks(cfg: Config, iteration: int, rank: int = 0, world: int = 1) -> list[TaskSpec]:
    """The B tasks of one iteration: deterministic in (run seed, iteration), split across ranks."""
    rng = random.Random(cfg.run.seed * 1_000_003 + iteration)
    seeds = [rng.randrange(2**31) for _ in range(cfg.rollout.tasks_per_batch)]
    tasks = [TaskSpec(seed=s, options={"split": cfg.env.train_split}) for s in seeds]
    return tasks[rank::world]


def _make_accelerator(cfg: Config) -> Any:
    from accelerate import Accelerator

    device = resolve_device(cfg.model.device)
    return Accelerator(cpu=device.type == "cpu")


def update_from(start_state: dict[str, Any], policy: torch.nn.Module, tokenizer: Any,
                trajectories: list[Trajectory], cfg: Config, iteration: int = 0) -> dict[str, float]:
    """One RL update of ``trajectories`` from the weights ``start_state``, with a fresh optimizer
    and update state, as the trainer's first update does; returns its metrics.

    For diagnostics that compare several updates of one batch (arms, micro-batch orders): each
    call starts from the same weights, so the updates differ only by ``cfg``."""
    policy.load_state_dict(start_state)
    accelerator = _make_accelerator(cfg)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    model, optimizer = accelerator.prepare(policy, optimizer)
    try:
        return iteration_update(model, policy, optimizer, accelerator, tokenizer, trajectories, cfg, iteration,
                                UpdateState.create(cfg))
    finally:
        accelerator.free_memory()


def train(cfg: Config, resume: bool = False) -> TrainResult:
    """Run SFT warm start (unless resuming) then RL; returns held-out success before/after.

    The env workers (processes or Ray actors) end with the run, however it ends: closed here,
    oldest pool first, while Ray is still up (closing them at interpreter exit, after Ray's
    own exit hook, would make Ray start a second session just to kill them)."""
    check_trainable(cfg)
    try:
        return _train(cfg, resume)
    finally:
        close_shared_pools()


def _train(cfg: Config, resume: bool) -> TrainResult:
    accelerator = _make_accelerator(cfg)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    run_dir = cfg.run.dir
    seed_everything(cfg.run.seed + rank)

    run_id = run_identity(run_dir) if resume else None
    state_ckpt = ckpt.latest_checkpoint(run_dir, run_id) if resume else None
    if resume and state_ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {run_dir / 'checkpoints'}")
    if main:
        if resume:
            record_resume(run_dir, cfg.model.device)
        else:
            run_id = start_run(run_dir, cfg.model.device)  # a fresh run: a new identity, a new metrics file
        save_config(cfg, run_dir / "config.yaml")
    log = RunLog(run_dir, tensorboard=cfg.run.tensorboard and main, fresh=not resume) if main else None

    with accelerator.main_process_first():  # the main process builds the tiny model; the others then load it
        model, tokenizer = load_policy(cfg.model, device=accelerator.device, env_id=cfg.env.id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    warmup = max(cfg.train.warmup_iterations, 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: min(1.0, (it + 1) / warmup) if warmup else 1.0
    )
    update_state = UpdateState.create(cfg)
    start_iteration, sft_success = 0, None
    progress = _progress(cfg.run.progress and main)

    with progress:
        if state_ckpt is not None:
            state = ckpt.load_training_state(state_ckpt)
            ckpt.load_model_weights(model, state_ckpt)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            update_state.load_state_dict(state["extra"]["update_state"])
            ckpt.set_rng_state(state["extra"]["rng_by_rank"][rank])
            start_iteration = state["iteration"] + 1
            sft_success = state["extra"].get("sft_success")
            if log is not None:
                log.truncate_after(state["iteration"])
        elif cfg.sft.enabled:
            pairs, demo_stats = collect_demonstrations(
                cfg.env.id, cfg.env.kwargs, tokenizer, cfg.prompt, cfg.sft, cfg.env.train_split
            )
            stats = train_sft(model, tokenizer, pairs, cfg.sft, progress=progress, dump_dir=run_dir if main else None)
            if log is not None:
                log.log(-1, "sft", {**demo_stats, **stats})

        model, optimizer = accelerator.prepare(model, optimizer)
        policy = accelerator.unwrap_model(model)
        backend = build_backend(cfg.model, policy, tokenizer, env_id=cfg.env.id)

        if state_ckpt is None:
            report = evaluate_policy(backend, tokenizer, cfg, progress=progress, rank=rank, world=world)
            report = _reduce_eval(accelerator, report)
            sft_success = report["success_rate"]
            if log is not None:
                log.log(-1, "eval", report)

        it_task = progress.add_task("RL", total=cfg.train.iterations, completed=start_iteration)
        for iteration in range(start_iteration, cfg.train.iterations):
            t0 = time.perf_counter()
            backend.sync_weights(policy)
            tasks = train_tasks(cfg, iteration, rank, world)
            try:
                trajectories, rollout_stats = collect_training_episodes(backend, tokenizer, cfg, tasks, iteration)
            except NonFiniteError as exc:  # NaN logits: say which weights are NaN, if any
                raise _with_dump(exc, iteration, "sampler", run_dir / f"nonfinite_sampler_iter_{iteration:06d}.json",
                                 lambda path: _dump_weight_report(policy, path), main) from None
            regularization = None
            if cfg.strategy.arbepo.enabled:
                regularization, reg_stats = collect_regularization(
                    backend, tokenizer, cfg, tasks, iteration, update_state)
                rollout_stats.update(reg_stats)
            if cfg.run.save_trajectories:
                write_jsonl(trajectories, run_dir / "trajectories" / f"iter_{iteration:06d}_rank{rank}.jsonl")
                if regularization is not None:
                    write_jsonl(regularization, run_dir / "trajectories" / f"iter_{iteration:06d}_rank{rank}_reg.jsonl")
            try:
                update_stats = iteration_update(
                    model, policy, optimizer, accelerator, tokenizer, trajectories, cfg, iteration, update_state,
                    regularization=regularization,
                )
            except NonFiniteError as exc:
                raise _with_dump(exc, iteration, "RL update", run_dir / f"nonfinite_batch_iter_{iteration:06d}.jsonl",
                                 lambda path, t=trajectories: write_jsonl(t, path), main) from None
            scheduler.step()
            elapsed = time.perf_counter() - t0
            metrics = _reduce_train(accelerator, {**rollout_stats, **update_stats, "time_s": elapsed,
                                                  "lr": scheduler.get_last_lr()[0]}, trajectories)
            if cfg.eval.every and (iteration + 1) % cfg.eval.every == 0 and iteration + 1 < cfg.train.iterations:
                report = _reduce_eval(accelerator, evaluate_policy(backend, tokenizer, cfg, progress=progress,
                                                                   rank=rank, world=world))
                if log is not None:
                    log.log(iteration, "eval", report)
            if log is not None:
                log.log(iteration, "train", metrics)
            progress.update(it_task, advance=1, description=(
                f"RL it {iteration + 1} success {metrics['success_rate']:.2f} "
                f"H {metrics['entropy_mean']:.3f} {metrics.get('env_steps_per_s', 0):.0f} steps/s "
                f"{metrics.get('tokens_per_s', 0):.0f} tok/s"))
            last = iteration + 1 == cfg.train.iterations
            interrupted = cfg.train.stop_after is not None and iteration + 1 >= cfg.train.stop_after and not last
            if last or interrupted or (
                cfg.train.checkpoint_every and (iteration + 1) % cfg.train.checkpoint_every == 0
            ):
                _save(accelerator, run_dir, iteration, policy, optimizer, scheduler, update_state, sft_success, cfg,
                      run_id)
            if interrupted:
                if log is not None:
                    log.close()
                return TrainResult(run_dir, sft_success, None, iteration + 1)

        if cfg.train.iterations > 0:
            final = _reduce_eval(accelerator, evaluate_policy(backend, tokenizer, cfg, progress=progress,
                                                              rank=rank, world=world))
            if log is not None:
                log.log(cfg.train.iterations, "eval", final)
        else:
            final = {"success_rate": sft_success}
        if log is not None:
            log.close()
        if main:
            policy.save_pretrained(run_dir / "final_model")
            tokenizer.save_pretrained(run_dir / "final_model")
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, sft_success, final["success_rate"], cfg.train.iterations)


def collect_training_episodes(backend: Any, tokenizer: Any, cfg: Config, tasks: list[TaskSpec],
                              iteration: int, pool: Any = None) -> tuple[list[Trajectory], dict[str, Any]]:
    """One iteration's on-policy episodes: AEPO's branching rollout when ``strategy.aepo``
    turns it on, else plain lockstep episodes. The trainer makes this choice so that the plain
    rollout engine does not need to know the methods built on it."""
    branching = branching_from_config(cfg)
    if branching is None:
        return collect(backend, tokenizer, cfg, tasks, iteration, pool=pool)
    rcfg = resolve_config(cfg)
    return collect_branching(backend, tokenizer, rcfg, branching, tasks, iteration, run_seed(cfg),
                             pool=pool if pool is not None else shared_pool(rcfg))


def collect_regularization(backend: Any, tokenizer: Any, cfg: Config, tasks: list[TaskSpec], iteration: int,
                           update_state: UpdateState) -> tuple[list[Trajectory], dict[str, float]]:
    """ArbEPO's regularisation rollout (docs/methods/README.md): the controller picks
    ``T_k`` from the entropy state, and the first ``task_fraction`` of this iteration's tasks are
    played again as plain episodes (no branching) at ``T_k``, with a sampling seed of their own.
    Returns the episodes marked as regularisation samples and ``arbepo/rollout_*`` metrics."""
    arb = cfg.strategy.arbepo
    controller = update_state.arbepo
    temperature = controller.temperature()
    reg_tasks = select_regularization_tasks(tasks, arb.task_fraction)
    if not reg_tasks:  # a process without tasks this iteration
        return [], {"arbepo/rollout_temperature": temperature, "arbepo/rollout_episodes": 0.0}
    rcfg = regularization_rollout_config(cfg, temperature, arb.samples_per_task)
    trajs, stats = collect(backend, tokenizer, rcfg, reg_tasks, iteration, seed=cfg.run.seed + 1_000_003)
    return mark_regularization(trajs), {
        "arbepo/rollout_temperature": temperature,
        "arbepo/rollout_episodes": stats["episodes"],
        "arbepo/rollout_success_rate": stats["success_rate"],
        "arbepo/rollout_s": stats["rollout_s"],
    }


def _save(accelerator, run_dir, iteration, policy, optimizer, scheduler, update_state, sft_success, cfg,
          run_id=None) -> None:
    rng_states = accelerator.gather_for_metrics([ckpt.rng_state()], use_gather_object=True)
    if accelerator.is_main_process:
        extra = {"update_state": update_state.state_dict(), "rng_by_rank": rng_states, "sft_success": sft_success}
        ckpt.save_checkpoint(run_dir, iteration, policy, optimizer, scheduler, extra, keep=cfg.train.keep_checkpoints,
                             run_id=run_id, config=to_dict(cfg))
    accelerator.wait_for_everyone()


def _with_dump(exc: NonFiniteError, iteration: int, where: str, path: Path, write: Any, main: bool) -> NonFiniteError:
    """``exc`` with the iteration, the path and the dump file (written by ``write(path)`` on the
    main process) filled in, so the user's one line says where to look."""
    exc.iteration = iteration if exc.iteration is None else exc.iteration
    exc.where = exc.where or where
    if main:
        write(path)
        exc.dump = path
    return exc


def _dump_weight_report(model: torch.nn.Module, path: Path) -> None:
    """Which parameters are non-finite: tells a NaN in the weights from a NaN in the inputs."""
    import json

    bad = nonfinite_tensors(model.state_dict().items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"nonfinite_parameters": bad}, indent=1) + "\n", encoding="utf-8")


def _reduce_eval(accelerator, report: dict[str, Any]) -> dict[str, Any]:
    """Combine per-process evaluation reports (episode-weighted means)."""
    if accelerator.num_processes == 1:
        return report
    reports = accelerator.gather_for_metrics([report], use_gather_object=True)
    total = sum(r["episodes"] for r in reports)
    out = dict(reports[0])
    for key, value in reports[0].items():
        if isinstance(value, float):
            out[key] = sum(r[key] * r["episodes"] for r in reports) / max(total, 1)
    out["episodes"] = total
    out.update(merge_tool_metrics(reports))
    # Per-task outcomes of every process, merged back into one list ordered by task seed.
    pairs = sorted((seed, won) for r in reports for seed, won in zip(r["task_seeds"], r["success_by_task"], strict=True))
    out["task_seeds"] = [seed for seed, _ in pairs]
    out["success_by_task"] = [won for _, won in pairs]
    return out


def _reduce_train(accelerator, stats: dict[str, Any], trajectories: list[Trajectory]) -> dict[str, Any]:
    if accelerator.num_processes == 1:
        return stats
    gathered = accelerator.gather_for_metrics([stats], use_gather_object=True)
    out = dict(stats)
    for key, value in stats.items():
        values = [g.get(key) for g in gathered]
        if isinstance(value, float) and all(isinstance(v, (int, float)) for v in values):
            out[key] = float(np.mean([v for v in values if not math.isnan(v)])) if values else value
    out.update(merge_tool_metrics(gathered))
    return out


def _progress(enabled: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), disable=not enabled,
    )
