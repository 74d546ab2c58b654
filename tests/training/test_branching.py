"""AEPO rollout: pre-monitoring split, consecutive-branch penalty, exact budget, forks."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest

from agentropy.agents.backends.base import Completion
from agentropy.agents.prompts import PromptConfig
from agentropy.envs.base import base_info, text_space
from agentropy.envs.pool import EnvPool
from agentropy.training.methods.aepo_rollout import (
    branch_score,
    collect_branching,
    global_count,
    leading_mean_entropy,
)
from agentropy.training.rollout import RolloutConfig, TaskSpec
from agentropy.training.strategy_config import AEPOConfig
from agentropy.training.trainer import collect_training_episodes
from agentropy.training.trajectory import read_jsonl, write_jsonl

POND = f"{__name__}:Pond"


class Pond(gym.Env[str, str]):
    """Each action drops a stone; "leave" ends the episode (won). Never ends otherwise."""

    def __init__(self, max_steps: int = 100):
        self.observation_space = self.action_space = text_space()
        self.max_steps = max_steps

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.stones: list[str] = []
        return f"A still pond ({seed}).", self._info()

    def _info(self):
        return base_info(task="throw stones", admissible_actions=["throw", "leave"], won=False)

    def step(self, action):
        self.stones.append(action)
        won = action == "leave"
        info = {**self._info(), "won": won}
        return f"Ripples: {len(self.stones)} ({'/'.join(self.stones[-2:])}).", float(won), won, len(self.stones) >= self.max_steps, info

    def get_state(self):
        return list(self.stones)

    def set_state(self, state):
        self.stones = list(state)


class PondNoState(Pond):
    get_state = None  # type: ignore[assignment]
    set_state = None  # type: ignore[assignment]


class EntropyScript:
    """A ``GenerationBackend`` whose reply entropy is set per turn by the test.

    The turn is read from the prompt (``[Step N] Current observation`` is turn N-1). Replies
    are "throw" (or "leave" with probability ``p_leave``), drawn per row from the call seed.
    """

    def __init__(self, tokenizer, entropy_of: Callable[[int], float], p_leave: float = 0.0):
        self.tokenizer, self.entropy_of, self.p_leave = tokenizer, entropy_of, p_leave
        self.calls = 0

    def generate(self, prompts, params):
        self.calls += 1
        out = []
        for row, prompt in enumerate(prompts):
            text = self.tokenizer.decode(prompt)
            turn = int(re.findall(r"\[Step (\d+)\] Current observation", text)[-1]) - 1
            rng = np.random.default_rng([params.seed, row])
            action = "leave" if rng.random() < self.p_leave else "throw"
            reply = f"<action>{action}</action>"
            ids = self.tokenizer.encode(reply, add_special_tokens=False)
            h = self.entropy_of(turn)
            out.append(Completion(ids, [-0.1] * len(ids), [h] * len(ids), "stop", text=reply))
        return out

    def sync_weights(self, model):
        pass


@pytest.fixture(scope="module")
def tokenizer():
    from agentropy.agents.tiny import train_tokenizer

    return train_tokenizer(["A still pond.", "<action>throw</action>", "<action>leave</action>",
                            "Ripples: 3 (throw/leave)."] * 4, vocab_size=300)


def _aepo(**kw) -> AEPOConfig:
    return AEPOConfig(**{"enabled": True, "dynamic_rollouts": True, **kw})


def _collect(tokenizer, entropy_of, aepo, k=4, tasks=2, max_turns=8, env=POND, p_leave=0.0, fork_method="auto"):
    """AEPO rollout of ``tasks`` Pond tasks; ``entropy_of(turn)`` is in units of ln|V|."""
    scale = math.log(len(tokenizer))
    cfg = RolloutConfig(env_id=env, group_size=k, max_turns=max_turns, prompt=PromptConfig(max_prompt_tokens=4096))
    backend = EntropyScript(tokenizer, lambda t: scale * entropy_of(t), p_leave)
    with EnvPool(env) as pool:
        return collect_branching(backend, tokenizer, cfg, aepo, [TaskSpec(seed=100 + i) for i in range(tasks)],
                                 iteration=1, seed=0, pool=pool, fork_method=fork_method)


# ---- the formulas, by hand ------------------------------------------------------------


def test_global_count_matches_hand_values():
    # m = clip(floor(k * sigmoid(0.5 * (H_root - H_tool))) + 1, 1, k)
    assert global_count(8, 2.0, 0.0) == 6  # floor(8 * 0.7311) + 1 = 5 + 1
    assert global_count(8, 1.0, 1.0) == 5  # floor(8 * 0.5) + 1
    assert global_count(4, 0.0, 10.0) == 1  # floor(4 * 0.0067) + 1
    assert global_count(4, 100.0, 0.0) == 4  # floor(4 * 1.0) + 1 = 5, clipped to k
    assert global_count(1, 0.0, 0.0) == 1
    assert global_count(10, 1.0, 3.0, beta_pm=1.0) == 2  # floor(10 * 0.1192) + 1


def branch_probability(dh: float, consecutive: int, cfg: AEPOConfig) -> float:
    """P(fork) = P_u(score >= tau) = clip(1 - tau / (1 - c*l) + beta * dH, 0, 1) for u ~ U(0, 1)."""
    factor = 1.0 - cfg.consecutive_penalty * consecutive
    if factor <= 0:
        return 1.0 if cfg.branch_threshold <= 0 else 0.0
    return min(max(1.0 - cfg.branch_threshold / factor + cfg.entropy_weight * dh, 0.0), 1.0)


def test_branch_probability_matches_hand_values_and_the_score_rule():
    cfg = AEPOConfig()  # tau 0.5, beta 0.2, c 0.05
    assert branch_probability(0.0, 0, cfg) == pytest.approx(0.5)
    assert branch_probability(1.0, 0, cfg) == pytest.approx(0.7)  # ARPO: 0.5 + 0.2 dH
    assert branch_probability(0.0, 2, cfg) == pytest.approx(1 - 0.5 / 0.9)
    assert branch_probability(1.0, 4, cfg) == pytest.approx(1 - 0.5 / 0.8 + 0.2)
    assert branch_probability(-3.0, 0, cfg) == 0.0 and branch_probability(5.0, 0, cfg) == 1.0
    assert branch_probability(0.0, 20, cfg) == 0.0  # the penalty factor reached 0
    assert branch_score(0.3, 1.0, 2, cfg) == pytest.approx((0.3 + 0.2) * 0.9)
    u = (np.arange(100_000) + 0.5) / 100_000
    for dh, runs in [(0.0, 0), (1.0, 3), (-1.0, 1), (0.5, 6)]:
        frac = np.mean([branch_score(x, dh, runs, cfg) >= cfg.branch_threshold for x in u[::50]])
        assert frac == pytest.approx(branch_probability(dh, runs, cfg), abs=2e-3)


# ---- the rollout ----------------------------------------------------------------------


def _by_group(trajs):
    groups: dict[str, list] = {}
    for t in trajs:
        groups.setdefault(t.group_id, []).append(t)
    return groups


def test_leading_mean_entropy_averages_the_first_window_tokens():
    assert leading_mean_entropy([1.0, 2.0, 3.0, 100.0], 3) == 2.0
    assert leading_mean_entropy([1.0, 2.0, 3.0, 100.0], None) == 26.5 and leading_mean_entropy([], 20) == 0.0


def test_premonitoring_splits_global_and_branch_budget(tokenizer):
    raw = _aepo()
    # Calm first reply, agitated replies after observations: m = 1, and every candidate forks
    # (beta * dH = 0.2 * 10 = 2 saturates the score): round 1 forks 1, round 2 forks 2.
    trajs, m = _collect(tokenizer, lambda t: 0.0 if t == 0 else 10.0, raw)
    assert m["aepo/m"] == [1, 1] and m["aepo/global_counts"] == [1, 1] and m["aepo/branch_counts"] == [3, 3]
    assert m["aepo/consecutive_runs"] == [[2], [2]]
    groups = _by_group(trajs)
    assert sorted(groups) == ["it1-t0", "it1-t0-probe", "it1-t1", "it1-t1-probe"]
    assert [t.kind for t in groups["it1-t0"]] == ["global", "branch", "branch", "branch"]
    assert [t.kind for t in groups["it1-t0-probe"]] == ["probe"]
    assert m["aepo/h_root_mean"] == 0.0 and m["aepo/h_tool_mean"] == pytest.approx(10 * math.log(len(tokenizer)))
    # Agitated first reply, calm afterwards: m = floor(4 * sigmoid(5)) + 1 = 4 globals, no branch.
    trajs, m = _collect(tokenizer, lambda t: 10.0 if t == 0 else 0.0, raw)
    assert m["aepo/m"] == [4, 4] and m["aepo/branch_counts"] == [0, 0]
    assert all(t.kind in ("global", "probe") for t in trajs)


def test_premonitoring_normalises_by_log_vocab(tokenizer):
    # (H_root - H_tool) / ln|V| = 4 -> m = floor(8 * sigmoid(2)) + 1 = 8; = 1 -> floor(8 * 0.622) + 1 = 5.
    _, m = _collect(tokenizer, lambda t: 4.0 if t == 0 else 0.0, _aepo(), k=8, tasks=1)
    assert m["aepo/m"] == [global_count(8, 4.0, 0.0)] == [8]
    _, m = _collect(tokenizer, lambda t: 1.0 if t == 0 else 0.0, _aepo(), k=8, tasks=1)
    assert m["aepo/m"] == [5]


def test_consecutive_branching_is_penalised(tokenizer):
    """k = 8, one global, every candidate's raw score saturated (beta * dH = 2).

    Every live trajectory past turn 0 is a candidate. No penalty: rounds 1, 2, 3 fork 1, 2,
    4 -> one run of 3 rounds. With c = 0.5 the factor
    is 1, 0.5, 0 at l = 0, 1, 2: rounds 1, 2 fork 1 and 2, round 3 cannot (l = 2), round 4
    forks the remaining 4 (l back to 0), so the runs are [2, 1] and branching is spread out.
    """
    base = dict(dynamic_rollouts=False, initial_rollouts=1)
    calm_then_agitated = lambda t: 0.0 if t == 0 else 10.0  # noqa: E731
    trajs0, m0 = _collect(tokenizer, calm_then_agitated, _aepo(consecutive_penalty=0.0, **base), k=8, tasks=1)
    trajs1, m1 = _collect(tokenizer, calm_then_agitated, _aepo(consecutive_penalty=0.5, **base), k=8, tasks=1)
    assert m0["aepo/consecutive_runs"] == [[3]] and m1["aepo/consecutive_runs"] == [[2, 1]]
    assert m0["aepo/branch_counts"] == m1["aepo/branch_counts"] == [7]
    assert m1["aepo/consecutive_max"] == 2.0 and m1["aepo/consecutive_mean"] == 1.5

    def fork_turns(trajs):
        return sorted(sum(s.info.get("branch_prefix", False) for s in t.steps) for t in trajs if t.kind == "branch")

    # A branch made in round r from a trajectory at turn t copies t steps; branches re-sample
    # their fork turn, so they lag the global by the rounds they were born after.
    assert fork_turns(trajs0) == [1, 1, 1, 2, 2, 2, 3]
    assert fork_turns(trajs1) == [1, 1, 2, 2, 3, 3, 4]


def test_exact_budget_with_early_ends_top_ups_and_branches(tokenizer, tmp_path):
    k, tasks = 4, 5
    trajs, m = _collect(tokenizer, lambda t: 0.5 + 0.3 * math.sin(3 * t), _aepo(), k=k, tasks=tasks,
                        p_leave=0.35, max_turns=6)
    groups = _by_group([t for t in trajs if t.kind != "probe"])
    assert len(groups) == tasks and all(len(g) == k for g in groups.values())
    assert len({t.traj_id for t in trajs}) == len(trajs)
    assert sum(t.kind == "probe" for t in trajs) == tasks
    assert m["aepo/global_counts"] == [sum(t.kind == "global" for t in g) for g in groups.values()]
    assert m["aepo/branch_counts"] == [sum(t.kind == "branch" for t in g) for g in groups.values()]
    assert sum(m["aepo/branch_counts"]) > 0 and m["aepo/top_up_mean"] > 0
    for group in groups.values():
        ids = {t.traj_id: t for t in group}
        for t in group:
            if t.kind != "branch":
                assert t.parent_id is None and not any(s.info.get("branch_prefix") for s in t.steps)
                continue
            parent = ids[t.parent_id]
            n = sum(bool(s.info.get("branch_prefix")) for s in t.steps)
            assert n >= 1 and all(s.info.get("branch_prefix") for s in t.steps[:n])
            for s, ps in zip(t.steps[:n], parent.steps[:n], strict=True):
                assert (s.response_ids, s.anchor_obs, s.turn, s.action) == (ps.response_ids, ps.anchor_obs, ps.turn,
                                                                            ps.action)
                assert s.info["prefix_of"] == ps.info.get("prefix_of", ps.traj_id)
                assert s.traj_id == t.traj_id and s.parent_id == t.parent_id
            # The branch re-samples the fork turn from the same observation as its parent.
            assert t.steps[n].anchor_obs == parent.steps[n].anchor_obs
            assert t.episode_return == pytest.approx(sum(s.reward for s in t.steps))
    write_jsonl(trajs, tmp_path / "it1.jsonl")
    assert [t.to_dict() for t in read_jsonl(tmp_path / "it1.jsonl")] == [t.to_dict() for t in trajs]


def test_fork_by_replay_equals_fork_by_state(tokenizer):
    entropy = lambda t: 0.2 * (t % 3)  # noqa: E731
    kw = dict(k=4, tasks=3, p_leave=0.2, max_turns=6)
    by_state, _ = _collect(tokenizer, entropy, _aepo(), fork_method="state", **kw)
    by_replay, _ = _collect(tokenizer, entropy, _aepo(), fork_method="replay", **kw)
    no_state, _ = _collect(tokenizer, entropy, _aepo(), env=f"{__name__}:PondNoState", **kw)
    assert any(t.kind == "branch" for t in by_state)
    assert [t.to_dict() for t in by_state] == [t.to_dict() for t in by_replay] == [t.to_dict() for t in no_state]


def test_single_sample_budget_never_branches(tokenizer):
    trajs, m = _collect(tokenizer, lambda t: 0.0 if t == 0 else 10.0, _aepo(), k=1, tasks=2)
    assert [t.kind for t in trajs] == ["global", "global"] and m["aepo/branch_counts"] == [0, 0]


def test_the_trainer_runs_the_branching_rollout_when_the_strategy_enables_it(tokenizer):
    rollout = RolloutConfig(group_size=4, max_turns=5, prompt=PromptConfig(max_prompt_tokens=4096))
    full = SimpleNamespace(rollout=rollout, prompt=rollout.prompt, run=SimpleNamespace(seed=3),
                           env=SimpleNamespace(id=POND, kwargs={}, train_split="train"),
                           strategy=SimpleNamespace(aepo=_aepo(rollout_budget=3)))
    backend = EntropyScript(tokenizer, lambda t: 0.0 if t == 0 else 50.0)
    with EnvPool(POND) as pool:
        trajs, m = collect_training_episodes(backend, tokenizer, full, [TaskSpec(seed=1)], iteration=0, pool=pool)
        assert [t.kind for t in trajs] == ["global", "branch", "branch", "probe"] and m["aepo/m"] == [1]
        full.strategy.aepo = AEPOConfig(enabled=True, branching=False)
        trajs, m = collect_training_episodes(backend, tokenizer, full, [TaskSpec(seed=1)], iteration=0, pool=pool)
        assert [t.kind for t in trajs] == ["global"] * 4 and "aepo/m" not in m
