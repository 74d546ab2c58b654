"""Lockstep collection: batching, records, faults, placement independence, JSONL round trip."""

from __future__ import annotations

import math
import os
import signal
import time
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from agentropy.agents.backends.base import Completion, SamplingParams
from agentropy.agents.prompts import PromptConfig, Turn, build_prompt_ids
from agentropy.envs.base import NOTHING_HAPPENS, base_info, text_space
from agentropy.envs.pool import EnvPool
from agentropy.training.rollout import RolloutConfig, TaskSpec, collect, resolve_config
from agentropy.training.trajectory import read_jsonl, write_jsonl

LADDER = f"{__name__}:Ladder"


class Ladder(gym.Env[str, str]):
    """Climb to rung ``goal`` (3..5, from the seed) with "up"; "down" goes back.

    ``faults`` maps a seed to ``raise`` | ``hang`` | ``die``; the fault fires on a step drawn
    at reset from the env's seeded RNG (1..3), so the same seed faults at the same turn.
    """

    def __init__(self, max_steps: int = 50, faults: dict[int, str] | None = None):
        self.observation_space = self.action_space = text_space()
        self.max_steps, self.faults = max_steps, dict(faults or {})

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed_, self.goal, self.rung, self.steps = seed, 3 + seed % 3, 0, 0
        self.fault_step = 1 + int(self.np_random.integers(0, 3))
        return f"You stand on rung 0 of {self.goal} (ladder {seed}).", self._info(False)

    def _info(self, invalid):
        return base_info(task=f"climb to rung {self.goal}", admissible_actions=["up", "down"],
                         won=self.rung == self.goal, expert_action="up", invalid_action=invalid, rung=self.rung)

    def step(self, action):
        self.steps += 1
        mode = self.faults.get(self.seed_)
        if mode and self.steps == self.fault_step:
            if mode == "raise":
                raise RuntimeError(f"ladder {self.seed_} broke at step {self.steps}")
            if mode == "hang":
                time.sleep(3600)
            if mode == "die":
                os.kill(os.getpid(), signal.SIGKILL)
        invalid = action not in ("up", "down")
        if not invalid:
            self.rung = max(0, self.rung + (1 if action == "up" else -1))
        won = self.rung == self.goal
        obs = NOTHING_HAPPENS if invalid else f"You are on rung {self.rung}."
        return obs, float(won), won, not won and self.steps >= self.max_steps, self._info(invalid)


class FakeClock:
    """Stands in for ``time`` in the rollout module: each ``perf_counter()`` read advances it by TICK_S,
    and the scripted backend's ``generate`` by GENERATE_S, so timing metrics follow from call counts."""

    TICK_S, GENERATE_S = 0.001, 2.0

    def __init__(self):
        self.now, self.reads = 100.0, 0

    def perf_counter(self) -> float:
        self.reads += 1
        self.now += self.TICK_S
        return self.now


class ScriptedBackend:
    """A ``GenerationBackend`` whose replies, log-probs and entropies come from a seeded RNG.

    Row ``i`` of a call draws from ``default_rng([params.seed, i, len(prompt)])``: the same
    prompts in the same order give the same replies, wherever the envs run.
    """

    REPLIES = ("think <action>up</action>", "<action>down</action>", "I am not sure")

    def __init__(self, tokenizer: Any, probs=(0.6, 0.3, 0.1)):
        self.tokenizer, self.probs = tokenizer, probs
        self.calls: list[tuple[list[list[int]], SamplingParams]] = []
        self.outputs: list[list[Completion]] = []
        self.clock: FakeClock | None = None  # when set, every call "takes" GENERATE_S on it

    def generate(self, prompts, params):
        if self.clock is not None:
            self.clock.now += self.clock.GENERATE_S
        self.calls.append(([list(p) for p in prompts], params))
        out = []
        for row, prompt in enumerate(prompts):
            rng = np.random.default_rng([params.seed, row, len(prompt)])
            text = self.REPLIES[rng.choice(len(self.REPLIES), p=self.probs)]
            ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]
            out.append(Completion(ids, (-rng.random(len(ids))).tolist(), (2 * rng.random(len(ids))).tolist(),
                                  "stop", text=text))
        self.outputs.append(out)
        return out

    def sync_weights(self, model):
        pass


@pytest.fixture(scope="module")
def tokenizer():
    from agentropy.agents.tiny import train_tokenizer

    corpus = ["You stand on rung 0 of 3 (ladder 1).", "<action>up</action>", "climb to rung 4",
              "Admissible actions:\nup\ndown", "Nothing happens.", "I am not sure"] * 4
    return train_tokenizer(corpus, vocab_size=300)


def _cfg(**kw) -> RolloutConfig:
    base = dict(env_id=LADDER, group_size=2, max_turns=6, prompt=PromptConfig(max_prompt_tokens=4096))
    return RolloutConfig(**{**base, **kw})


def _tasks(n: int, first: int = 10) -> list[TaskSpec]:
    return [TaskSpec(seed=first + i) for i in range(n)]


def _run(tokenizer, cfg, tasks, pool=None, iteration=3, seed=7, **env_kw):
    backend = ScriptedBackend(tokenizer)
    own = pool is None
    pool = pool or EnvPool(cfg.env_id, cfg.env_kwargs, mode=cfg.env_workers, num_workers=2,
                           step_timeout_s=cfg.step_timeout_s)
    try:
        trajs, metrics = collect(backend, tokenizer, cfg, tasks, iteration, seed, pool=pool)
    finally:
        if own:
            pool.close()
    return trajs, metrics, backend


def test_lockstep_one_generate_per_round_over_all_live_episodes(tokenizer):
    cfg = _cfg()
    trajs, metrics, backend = _run(tokenizer, cfg, _tasks(3))
    assert [t.traj_id for t in trajs] == [f"it3-t{b}-g{j}" for b in range(3) for j in range(2)]
    assert [t.group_id for t in trajs] == [f"it3-t{b}" for b in range(3) for _ in range(2)]
    # Round r prompts exactly the episodes that have more than r steps, in episode order.
    for r, (prompts, params) in enumerate(backend.calls):
        live = [t for t in trajs if t.length > r]
        assert prompts == [t.steps[r].prompt_ids for t in live]
        assert params.n == 1 and params.stop == ("</action>",) and params.max_tokens == cfg.max_tokens
    assert len(backend.calls) == max(t.length for t in trajs) == metrics["generate_calls"]
    seeds = [p.seed for _, p in backend.calls]
    assert len(set(seeds)) == len(seeds)
    assert metrics["env_steps"] == sum(t.length for t in trajs)


def test_steps_record_the_completion_as_is_and_the_anchor_observation(tokenizer):
    cfg = _cfg()
    trajs, _, backend = _run(tokenizer, cfg, _tasks(2))
    for t in trajs:
        env = Ladder()
        obs, info = env.reset(seed=t.seed, options={"split": "train"})
        history: list[Turn] = []
        for i, s in enumerate(t.steps):
            row = [t2 for t2 in trajs if t2.length > i].index(t)
            comp = backend.outputs[i][row]
            assert (s.response_ids, s.logprobs, s.entropy) == (comp.token_ids, comp.logprobs, comp.entropy)
            assert s.turn == i and s.anchor_obs == obs and s.traj_id == t.traj_id and s.group_id == t.group_id
            assert s.prompt_ids == build_prompt_ids(tokenizer, cfg.prompt, info["task"], history, obs,
                                                    info["admissible_actions"])
            expected_action = {"think <action>up</action>": "up", "<action>down</action>": "down"}.get(comp.text, "")
            assert s.action == expected_action
            history.append(Turn(obs, s.action))
            obs, reward, term, trunc, info = env.step(s.action)
            penalty = 0.0 if expected_action else -0.1
            assert s.reward == pytest.approx(reward + penalty)
            assert s.info["env_reward"] == reward and s.info["won"] == info["won"]
            assert s.info["invalid_action"] == info["invalid_action"] and s.info["expert_action"] == "up"
            assert s.info["rung"] == info["rung"]
            assert ("format_error" in s.info) == (not expected_action)
            assert (s.terminated, s.truncated) == (term, trunc)
        assert t.episode_return == pytest.approx(sum(s.reward for s in t.steps))
        assert t.won == info["won"]
        assert t.truncation_reason == (None if t.won else "max_turns")
        assert t.task == f"climb to rung {3 + t.seed % 3}"


def test_group_shares_task_seed_and_options(tokenizer):
    tasks = [TaskSpec(seed=4, options={"split": "test"}), TaskSpec(seed=5)]
    trajs, _, _ = _run(tokenizer, _cfg(group_size=3), tasks)
    g0, g1 = trajs[:3], trajs[3:]
    assert {t.steps[0].anchor_obs for t in g0} == {"You stand on rung 0 of 4 (ladder 4)."}
    assert {t.steps[0].anchor_obs for t in g1} == {"You stand on rung 0 of 5 (ladder 5)."}
    assert [t.split for t in trajs] == ["test"] * 3 + ["train"] * 3
    assert {t.task_id for t in g0} == {"seed-4"}


def test_episode_end_reasons(tokenizer):
    trajs, metrics, _ = _run(tokenizer, _cfg(max_turns=40, env_kwargs={"max_steps": 4}), _tasks(4))
    reasons = {t.truncation_reason for t in trajs}
    assert reasons <= {None, "env_truncated"} and "env_truncated" in reasons
    for t in trajs:
        assert t.length <= 4
        if t.truncation_reason is None:
            assert t.won and t.steps[-1].terminated
    assert metrics["truncated/env_truncated"] == sum(t.truncation_reason == "env_truncated" for t in trajs)


@pytest.mark.parametrize("mode", ["inline", "process"])
def test_env_raising_at_a_random_turn_truncates_only_its_episodes(tokenizer, mode):
    faults = {11: "raise", 13: "raise"}
    cfg = _cfg(env_kwargs={"faults": faults}, env_workers=mode, max_turns=8)
    trajs, metrics, _ = _run(tokenizer, cfg, _tasks(4))
    for t in trajs:
        if t.seed in faults:
            env = Ladder()
            env.reset(seed=t.seed)
            assert t.truncation_reason == f"env_error: RuntimeError: ladder {t.seed} broke at step {env.fault_step}"
            assert t.length == env.fault_step  # the steps before, and the turn that faulted
            assert t.steps[-1].info["env_fault"] == t.truncation_reason and t.steps[-1].truncated
            assert all("env_fault" not in s.info for s in t.steps[:-1])
        else:
            assert not (t.truncation_reason or "").startswith("env_")
    assert metrics["truncated/env_error"] == 4


@pytest.mark.timeout(300)  # a guard against the hang itself; the reasons and counts below are the checks
def test_hanging_env_and_killed_worker_are_reported_and_the_batch_completes(tokenizer):
    # One worker per task, so the hang and the death never share a worker (under load their order varies).
    cfg = _cfg(env_kwargs={"faults": {11: "hang", 12: "die"}}, env_workers="process", step_timeout_s=4.0,
               num_workers=8)
    trajs, metrics, _ = _run(tokenizer, cfg, _tasks(4))
    by_seed = {}
    for t in trajs:
        by_seed.setdefault(t.seed, set()).add(t.truncation_reason)
    assert by_seed[11] == {"env_timeout"} and by_seed[12] == {"worker_died"}
    for seed in (10, 13):
        assert by_seed[seed] <= {None, "max_turns"}
    for t in trajs:
        if t.seed in (11, 12):
            env = Ladder()
            env.reset(seed=t.seed)
            assert t.length == env.fault_step and t.steps[-1].info["env_fault"] == t.truncation_reason
        else:
            assert all(s.info.get("rung") is not None for s in t.steps)
    assert metrics["truncated/env_timeout"] == 2 and metrics["truncated/worker_died"] == 2


def test_inline_process_pool_give_identical_trajectories(tokenizer):
    tasks = _tasks(3)
    kw = {"env_kwargs": {"faults": {12: "raise"}}}
    inline, _, _ = _run(tokenizer, _cfg(**kw), tasks)
    process, _, _ = _run(tokenizer, _cfg(env_workers="process", **kw), tasks)
    assert [t.to_dict() for t in inline] == [t.to_dict() for t in process]
    again, _, _ = _run(tokenizer, _cfg(**kw), tasks)
    assert [t.to_dict() for t in again] == [t.to_dict() for t in inline]
    other, _, _ = _run(tokenizer, _cfg(**kw), tasks, iteration=4)
    assert [t.to_dict()["steps"] for t in other] != [t.to_dict()["steps"] for t in inline]


@pytest.mark.ray
def test_ray_workers_give_identical_trajectories(tokenizer):
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tasks = _tasks(2)
        inline, _, _ = _run(tokenizer, _cfg(), tasks)
        with EnvPool(LADDER, mode="ray", num_workers=2, ray_actor_options={"num_cpus": 0.5}) as pool:
            on_ray, _, _ = _run(tokenizer, _cfg(env_workers="ray"), tasks, pool=pool)
        assert [t.to_dict() for t in on_ray] == [t.to_dict() for t in inline]
    finally:
        if started:
            ray.shutdown()


def test_jsonl_round_trip_is_lossless(tokenizer, tmp_path):
    trajs, _, _ = _run(tokenizer, _cfg(env_kwargs={"faults": {10: "raise"}}), _tasks(2))
    trajs[1].steps[0].info["odd"] = math.inf
    write_jsonl(trajs, tmp_path / "trajectories" / "it3.jsonl")
    back = list(read_jsonl(tmp_path / "trajectories" / "it3.jsonl"))
    assert [t.to_dict() for t in back] == [t.to_dict() for t in trajs]


def test_metrics_by_turn_and_timing(tokenizer, monkeypatch):
    import agentropy.training.rollout as rollout_module

    clock = FakeClock()
    monkeypatch.setattr(rollout_module, "time", clock)
    backend = ScriptedBackend(tokenizer)
    backend.clock = clock
    with EnvPool(LADDER, mode="inline") as pool:
        trajs, m = collect(backend, tokenizer, _cfg(), _tasks(3), 3, 7, pool=pool)
    for turn in range(max(t.length for t in trajs)):
        hs = [float(np.mean(t.steps[turn].entropy)) for t in trajs if t.length > turn]
        assert m[f"turn_entropy/{turn}"] == pytest.approx(np.mean(hs))
    assert m["success_rate"] == pytest.approx(np.mean([t.won for t in trajs]))
    assert m["length_mean"] == pytest.approx(np.mean([t.length for t in trajs]))
    assert m["format_error_rate"] == pytest.approx(np.mean([("format_error" in s.info) for t in trajs for s in t.steps]))
    # Timing from counts: one backend call per round, each timed by two clock reads around it, so each
    # adds GENERATE_S + TICK_S = 2.001 s to generate_s; every env step is counted once.
    calls = len(backend.calls)
    assert m["generate_calls"] == calls == max(t.length for t in trajs)  # lockstep: one call per turn
    assert m["generate_s"] == pytest.approx(calls * (FakeClock.GENERATE_S + FakeClock.TICK_S))
    assert m["env_steps"] == sum(t.length for t in trajs)
    # rollout_s spans every read from the first to the last: the calls' GENERATE_S plus TICK_S per read
    # after the first (the clock advances on each read)
    assert m["rollout_s"] == pytest.approx(calls * FakeClock.GENERATE_S + (clock.reads - 1) * FakeClock.TICK_S)
    assert m["env_steps_per_s"] == pytest.approx(m["env_steps"] / m["rollout_s"])
    assert m["overhead"] == pytest.approx((m["rollout_s"] - m["generate_s"]) / m["generate_s"])


def test_config_errors_name_the_field(tokenizer):
    with pytest.raises(ValueError, match="rollout.group_size"):
        RolloutConfig(group_size=0)
    with pytest.raises(ValueError, match="rollout.top_p"):
        RolloutConfig(top_p=0)
    with pytest.raises(RuntimeError, match="every env failed at reset"):
        _run(tokenizer, _cfg(env_id=f"{__name__}:NoSuchEnv"), _tasks(1))


def test_full_experiment_config_supplies_env_and_prompt():
    prompt = PromptConfig(memory_turns=2)
    full = SimpleNamespace(rollout=RolloutConfig(group_size=3), prompt=prompt,
                           env=SimpleNamespace(id=LADDER, kwargs={"max_steps": 9}, train_split="train"))
    rcfg = resolve_config(full, split="test")
    assert (rcfg.env_id, rcfg.env_kwargs, rcfg.split, rcfg.prompt, rcfg.group_size) == (
        LADDER, {"max_steps": 9}, "test", prompt, 3)
    full.rollout = RolloutConfig(env_id="agentropy/Search-v0")
    with pytest.raises(ValueError, match="rollout.env_id .* set env.id instead"):
        resolve_config(full)


def test_household_with_the_tiny_model(tmp_path_factory):
    """The real thing: Household envs, the hf backend and the tiny model, inline and in processes."""
    import torch

    from agentropy.agents.backends.hf import HFBackend
    from agentropy.agents.tiny import TinyModelConfig, build_tiny_model, load_model_and_tokenizer
    from agentropy.envs.registry import make_env

    torch.set_num_threads(1)
    tiny = TinyModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, episodes_per_env=4, max_episode_steps=10)
    path = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", cfg=tiny)
    model, tok = load_model_and_tokenizer(path)
    backend = HFBackend(model, tok)
    cfg = RolloutConfig(group_size=2, max_turns=3, max_tokens=12)
    tasks = [TaskSpec(seed=s) for s in (1, 2)]
    results = []
    for mode in ("inline", "process"):
        with EnvPool(cfg.env_id, mode=mode, num_workers=2) as pool:
            trajs, metrics = collect(backend, tok, cfg, tasks, iteration=0, seed=1, pool=pool)
        results.append([t.to_dict() for t in trajs])
    assert results[0] == results[1]
    assert len(trajs) == 4 and all(t.length == 3 or t.truncation_reason is None for t in trajs)
    for t in trajs:
        env = make_env(cfg.env_id)
        assert t.task == env.reset(seed=t.seed, options={"split": "train"})[1]["task"] != ""
        for s in t.steps:
            assert 1 <= len(s.response_ids) <= 12 and len(s.logprobs) == len(s.entropy) == len(s.response_ids)
            assert all(h >= 0 for h in s.entropy) and all(lp <= 0 for lp in s.logprobs)
            assert s.prompt_ids[-3:] == tok.encode("<|im_start|>assistant\n", add_special_tokens=False)[-3:]
    assert metrics["generate_calls"] == 3 and metrics["entropy_mean"] > 0
