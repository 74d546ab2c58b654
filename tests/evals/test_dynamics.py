"""Each entropy-dynamics statistic on synthetic data whose answer is known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agentropy.evals import dynamics as dyn
from agentropy.training.trajectory import Step, Trajectory


def step(turn: int, entropy=(), anchor: str = "", response=(), **info) -> Step:
    return Step(turn=turn, prompt_ids=[0], response_ids=list(response), logprobs=[0.0] * len(response),
                entropy=list(entropy), reward=0.0, terminated=False, truncated=False, anchor_obs=anchor,
                action="", group_id="", traj_id="", info=dict(info))


def traj(traj_id: str, group: str, steps: list[Step], kind: str = "global", ret: float = 0.0) -> Trajectory:
    return Trajectory(traj_id=traj_id, group_id=group, task_id=group, seed=0, steps=steps, kind=kind,
                      episode_return=ret)


def visits(traj_id: str, group: str, anchors: list[str], kind: str = "global") -> Trajectory:
    return traj(traj_id, group, [step(t, [1.0], a, [t]) for t, a in enumerate(anchors)], kind=kind)


# --- summaries over seeds ----------------------------------------------------------------------


def test_mean_ci_is_the_t_interval_and_nan_with_one_seed():
    s = dyn.mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t_{0.975, 2} * s / sqrt(n), s = 1
    assert s.n == 3 and s.mean == pytest.approx(2.0)
    assert (s.lo, s.hi) == (pytest.approx(2.0 - half), pytest.approx(2.0 + half))
    one = dyn.mean_ci([0.7, math.nan, None])
    assert one.n == 1 and one.mean == 0.7 and math.isnan(one.lo) and math.isnan(one.hi)
    assert dyn.mean_ci([]).n == 0 and math.isnan(dyn.mean_ci([]).mean)
    assert one.to_json() == {"mean": 0.7, "lo": None, "hi": None, "n": 1}


# --- 1. exp law ----------------------------------------------------------------------------------


def test_exp_law_fit_recovers_a_and_b():
    h = np.linspace(0.2, 2.0, 12)
    fit = dyn.fit_exp_law(h, -0.3 * np.exp(h) + 2.0)
    assert fit.a == pytest.approx(0.3) and fit.b == pytest.approx(2.0) and fit.r2 == pytest.approx(1.0)
    assert fit.n == 12
    noisy = -0.3 * np.exp(h) + 2.0 + np.random.default_rng(0).normal(0.0, 0.01, h.size)
    fit = dyn.fit_exp_law(h, noisy)
    assert fit.a == pytest.approx(0.3, abs=0.02) and fit.b == pytest.approx(2.0, abs=0.05) and fit.r2 > 0.99


def test_exp_law_fit_is_nan_when_it_cannot_be_fitted():
    assert math.isnan(dyn.fit_exp_law([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]).a)  # no spread in H
    assert math.isnan(dyn.fit_exp_law([1.0, 2.0], [0.1, 0.2]).a)  # two points
    flat = dyn.fit_exp_law([0.5, 1.0, 1.5, math.nan], [0.4, 0.4, 0.4, 0.9])
    assert flat.n == 3 and flat.a == pytest.approx(0.0, abs=1e-12) and math.isnan(flat.r2)


# --- 2. decline ------------------------------------------------------------------------------------


def test_spearman_of_a_monotone_series_is_minus_one_and_counts_falls():
    steps = list(range(10))
    decline = dyn.entropy_decline(steps, [2.0 - 0.1 * k**2 for k in steps])  # nonlinear, monotone
    assert decline.rho == pytest.approx(-1.0) and decline.fell == 1.0 and decline.n == 10
    assert dyn.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    mixed = dyn.entropy_decline([3, 0, 1, 2], [1.5, 1.0, 2.0, 1.8])  # sorted: 1.0, 2.0, 1.8, 1.5
    assert mixed.fell == pytest.approx(2 / 3)
    assert math.isnan(dyn.spearman([0, 1, 2], [1.0, 1.0, 1.0]))
    two = dyn.entropy_decline([0, 1], [0.2, 0.3])  # one change: no trend to measure
    assert math.isnan(two.rho) and math.isnan(two.fell) and two.n == 2


# --- 3. per-turn entropy -------------------------------------------------------------------------


def test_turn_entropy_is_token_weighted_and_skips_probes_and_branch_prefixes():
    trajs = [
        traj("a", "g", [step(0, [1.0, 1.0, 1.0]), step(1, [2.0])]),
        traj("b", "g", [step(0, [3.0]), step(1, [])]),
        traj("p", "g", [step(0, [100.0])], kind="probe"),
        traj("c", "g", [step(0, [100.0], branch_prefix=True), step(1, [4.0])], kind="branch"),
    ]
    assert dyn.token_entropy_by_turn(trajs) == {0: pytest.approx(1.5), 1: pytest.approx(3.0)}


def test_entropy_map_averages_runs_aligned_by_step():
    m = dyn.entropy_map([{0: {0: 1.0, 1: 2.0}, 1: {0: 3.0}}, {0: {0: 3.0}}])
    assert m.turns == [0, 1] and m.steps == [0, 1]
    assert m.values[0].tolist() == [2.0, 3.0]
    assert m.values[1, 0] == 2.0 and math.isnan(m.values[1, 1])
    assert m.n_runs.tolist() == [[2, 1], [1, 0]]


# --- 4. drift --------------------------------------------------------------------------------------


def test_cumulative_drift_by_hand_and_stops_at_a_missing_turn():
    h0 = {0: 1.0, 1: 1.0, 2: 1.0, 4: 1.0}
    hk = {0: 1.5, 1: 0.5, 2: 1.25, 3: 9.0, 4: 9.0}
    assert dyn.cumulative_drift(hk, h0).tolist() == [0.5, 1.0, 1.25]
    assert dyn.cumulative_drift({1: 1.0}, {1: 2.0}).size == 0


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_drift_exponent_fit_recovers_p_from_generated_drifts(p):
    """Per-turn entropies whose drift |H_t(k) - H_t(0)| = c((t+1)^p - t^p) (times noise) give D = c T^p."""
    rng = np.random.default_rng(int(p))
    turns = 25
    h0 = {t: 1.5 + 0.1 * rng.normal() for t in range(turns)}
    sign = rng.choice([-1.0, 1.0], size=turns)
    hk = {t: h0[t] + sign[t] * 0.01 * ((t + 1) ** p - t**p) * (1 + 0.1 * rng.normal()) for t in range(turns)}
    fit = dyn.fit_power_law(dyn.cumulative_drift(hk, h0))
    assert fit.p == pytest.approx(p, abs=0.1)
    assert fit.n == turns and fit.r2 > 0.99


def test_power_law_fit_is_exact_on_an_exact_power_and_skips_zero_drift():
    d = [0.0] + [3.0 * t**1.5 for t in range(2, 10)]
    fit = dyn.fit_power_law(d)
    assert fit.p == pytest.approx(1.5) and fit.c == pytest.approx(3.0) and fit.n == 8
    assert math.isnan(dyn.fit_power_law([0.1, 0.2]).p)


# --- 5. post-observation -----------------------------------------------------------------------


def test_split_reply_at_the_boundaries():
    assert dyn.split_reply([], 4) == ([], [])
    assert dyn.split_reply([1.0, 2.0], 4) == ([1.0, 2.0], [])  # shorter than n: all head
    assert dyn.split_reply([1.0, 2.0, 3.0, 4.0], 4) == ([1.0, 2.0, 3.0, 4.0], [])  # exactly n
    assert dyn.split_reply([1.0, 2.0, 3.0, 4.0, 5.0], 4) == ([1.0, 2.0, 3.0, 4.0], [5.0])
    assert dyn.split_reply([1.0, 2.0], 0) == ([], [1.0, 2.0])
    with pytest.raises(ValueError, match="n"):
        dyn.split_reply([1.0], -1)


def test_post_observation_pairs_only_replies_longer_than_n():
    trajs = [
        traj("a", "g", [step(0, [3, 3, 3, 3, 1, 1]), step(1, [1, 1, 1, 1, 1])]),
        traj("b", "g", [step(0, [2, 2]), step(1, [2, 2, 2, 2])]),  # short replies: left out
        traj("c", "g", [step(0, [])]),  # empty reply: left out
    ]
    by_turn = dyn.post_observation(trajs, n=4)
    t0, t1 = by_turn[0], by_turn[1]
    assert (t0.pairs, t0.short, t0.empty) == (1, 1, 1)
    assert t0.head_mean == 3.0 and t0.rest_mean == 1.0 and t0.ratio == 3.0
    assert (t1.pairs, t1.short, t1.empty) == (1, 1, 0) and t1.ratio == 1.0
    pooled = dyn.pool_post_observation(by_turn)
    assert pooled.ratio == pytest.approx((3 + 1) / (1 + 1)) and pooled.pairs == 2 and pooled.empty == 1
    only_short = dyn.post_observation([traj("d", "g", [step(0, [5.0])])], n=4)[0]
    assert only_short.pairs == 0 and math.isnan(only_short.ratio)


# --- 6. recurrence ---------------------------------------------------------------------------------


def test_state_recurrence_matches_hand_counts():
    trajs = [
        visits("A", "g1", ["s0", "s1", "s2"]),
        visits("B", "g1", ["s0", "s1", "s3", "s1"]),
        visits("C", "g1", ["s0", "s4"]),
        visits("D", "g2", ["s0", "s5"]),  # same text as g1's s0, but another group
        visits("E", "g2", ["s0", "s6", "s6"]),  # s6 revisited by one trajectory only: not recurring
        visits("P", "g1", ["s2"], kind="probe"),  # probes are not counted
    ]
    r = dyn.state_recurrence(trajs)
    # g1: s0 {A,B,C} 3 steps, s1 {A,B} 3 steps, s2 {A}, s3 {B}, s4 {C}; g2: s0 {D,E} 2, s5 {D}, s6 {E} 2 steps
    assert (r.states, r.recurring, r.groups) == (8, 3, 2)
    assert r.fraction == pytest.approx(3 / 8)
    assert r.step_group_sizes == {1: 4, 2: 2, 3: 2}
    assert r.mean_step_group_size == pytest.approx(14 / 8)


def test_branch_prefix_copies_do_not_count_as_visits():
    source = visits("A", "g", ["s0", "s1"])
    branch = traj("A.b", "g", [step(0, [1.0], "s0", [0], branch_prefix=True), step(1, [1.0], "s2", [1])],
                  kind="branch")
    r = dyn.state_recurrence([source, branch])
    assert (r.states, r.recurring) == (3, 0)


# --- 7. collapse signals ---------------------------------------------------------------------------


def test_collapse_signals_measure_the_window_up_to_the_largest_spike():
    steps = [7, 0, 1, 2, 3, 4, 5, 6]  # unsorted on purpose
    order = np.argsort(steps)
    grad = np.asarray([1, 20, 1, 1, 1, 1, 10, 1], float)  # step 0 (20) is skipped: nothing before it
    reward_std = np.asarray([0.2, 1.0, 1.0, 0.9, 0.7, 0.5, 0.3, 0.2], float)
    entropy = np.asarray([1.0, 2.0, 2.0, 2.0, 2.0, 1.9, 1.2, 1.0], float)
    sig = dyn.collapse_signals(steps, grad, reward_std, entropy, window=3)
    assert sig.spike_step == 5
    assert sig.spike_ratio == pytest.approx(10.0)  # median of the norms is 1
    assert sig.d_reward_std == pytest.approx(0.3 - 0.9)  # step 5 minus step 2
    assert sig.d_entropy == pytest.approx(1.2 - 2.0)
    wide = dyn.collapse_signals(np.asarray(steps)[order], grad[order], reward_std[order], entropy[order], window=50)
    assert wide.d_reward_std == pytest.approx(0.3 - 1.0)  # window clipped at step 0
    assert dyn.collapse_signals([0], [3.0], [1.0], [1.0]).spike_step is None
    flat = dyn.collapse_signals([0, 1, 2, 3], [2.0, 1.0, 1.0, 1.0], [1.0] * 4, [1.0] * 4)
    assert flat.spike_step is None and math.isnan(flat.d_entropy)  # no norm above the median
    with pytest.raises(ValueError, match="window"):
        dyn.collapse_signals(steps, grad, reward_std, entropy, window=0)


def test_repeated_output_rate_counts_identical_replies_per_group_and_turn():
    def replies(traj_id, group, ids):
        return traj(traj_id, group, [step(t, [1.0] * len(r), f"o{t}", r) for t, r in enumerate(ids)])

    trajs = [
        replies("a", "g1", [[1, 2], [5]]),
        replies("b", "g1", [[1, 2], [5]]),
        replies("c", "g1", [[3], [5]]),
        replies("d", "g2", [[1, 2]]),
        replies("e", "g2", [[]]),
        replies("f", "g2", [[]]),  # two empty replies are identical
    ]
    # g1 turn 0: 3 replies, 2 distinct -> 1; g1 turn 1: 3 identical -> 2; g2 turn 0: 3 replies, 2 distinct -> 1
    assert dyn.repeated_output_rate(trajs) == (4, 9)


def test_group_reward_std_is_the_mean_within_group_std():
    trajs = [traj("a", "g1", [], ret=1.0), traj("b", "g1", [], ret=0.0), traj("c", "g2", [], ret=1.0),
             traj("d", "g2", [], ret=1.0), traj("e", "g3", [], ret=5.0)]  # g3 has one trajectory: skipped
    assert dyn.group_reward_std(trajs) == pytest.approx((0.5 + 0.0) / 2)


# --- verdicts -----------------------------------------------------------------------------------


def test_threshold_verdicts_follow_the_stated_rule():
    def s(lo, hi, n=3):
        return {"mean": None if lo is None else (lo + hi) / 2, "lo": lo, "hi": hi, "n": n}

    noise = "not distinguishable from noise"
    assert dyn.threshold_verdict(s(1.6, 2.4), 1.5, "above") == "holds"
    assert dyn.threshold_verdict(s(0.8, 1.2), 1.5, "above") == "does not hold"
    assert dyn.threshold_verdict(s(1.2, 1.8), 1.5, "above") == noise
    assert dyn.threshold_verdict(s(0.8, 1.2), 1.5, "below") == "holds"
    assert dyn.threshold_verdict(s(None, None, 1), 1.5, "below") == noise
    # a predicted absence can be refuted but never confirmed
    assert dyn.threshold_verdict(s(0.1, 0.3), 0.0, "absent") == "does not hold"
    assert dyn.threshold_verdict(s(-0.1, 0.1), 0.0, "absent") == noise
    assert dyn.threshold_verdict(s(-0.3, -0.1), 0.0, "absent") == noise
    assert dyn.combine_verdicts(["holds", "holds"]) == "holds"
    assert dyn.combine_verdicts(["holds", noise]) == noise
    assert dyn.combine_verdicts([noise, "does not hold"]) == "does not hold"


def _strategy(slope, corridor, baseline, n=2, collapsed_runs=0, recurrence=0.5):
    half = 0.0 if n > 1 else None
    summary = {"mean": slope, "lo": None if half is None else slope - 0.1, "hi": None if half is None else slope + 0.1,
               "n": n}
    blank = {"mean": 0.0, "lo": -1.0, "hi": 1.0, "n": n}
    rec = {"mean": recurrence, "lo": recurrence - 0.1, "hi": recurrence + 0.1, "n": n}
    return {"corridor": corridor, "baseline": baseline, "runs": ["r"] * n, "drift": {"slope": summary},
            "exp_law": {"a": blank, "r2": blank}, "decline": {"rho": blank, "fell": blank},
            "post_obs": {"log_ratio": blank, "new_minus_repeat": blank},
            "recurrence": {"informative_first": rec, "informative_change": blank},
            "collapse": {"d_reward_std_excess": blank, "d_entropy_excess": blank, "collapsed_runs": collapsed_runs},
            "repeated": {"change_if_collapsed": blank}}


def test_claims_table_drift_regime_depends_on_the_corridor_and_scope_on_the_methods():
    rows = dyn.claims_table({"grpo": _strategy(0.5, False, True, collapsed_runs=1),
                             "epo": _strategy(0.5, True, False, recurrence=0.5),
                             "one_seed": _strategy(0.0, True, False, n=1, recurrence=0.9)})
    drift = {r["strategy"]: r for r in rows if r["claim_id"] == "drift"}
    assert drift["grpo"]["verdict"] == "holds"  # slope in [0.4, 0.6] > 0 without the corridor
    assert drift["epo"]["verdict"] == "does not hold"  # with the corridor the slope should not be > 0
    assert drift["one_seed"]["verdict"] == "not distinguishable from noise" and "no CI" in drift["one_seed"]["note"]
    assert drift["epo"]["conditions"][0]["side"] == "absent"
    decline = {r["strategy"]: r for r in rows if r["claim_id"] == "decline"}
    assert decline["grpo"]["verdict"] == "not distinguishable from noise"  # CI of rho straddles -0.5
    assert decline["epo"]["verdict"] == "n/a"  # the claim is about plain GRPO
    echo = {r["strategy"]: r["verdict"] for r in rows if r["claim_id"] == "collapse_entropy"}
    assert echo == {"grpo": "not distinguishable from noise", "epo": "no collapse to test",
                    "one_seed": "no collapse to test"}
    # grpo and epo measured the same recurrence (same numbers): one row naming both
    recurrence = [r for r in rows if r["claim_id"] == "recurrence"]
    assert [r["strategy"] for r in recurrence] == ["grpo, epo", "one_seed"]
    assert "identical" in recurrence[0]["note"]


# --- calibrated statistics -------------------------------------------------------------------------


def test_noise_variance_and_drift_vs_noise_by_hand():
    # halves: A = 10 / 5 = 2.0, B = 9 / 3 = 3.0 -> (A - B)^2 * 5 * 3 / 8^2 = 15 / 64
    assert dyn.noise_variance((10.0, 5, 9.0, 3)) == pytest.approx(15 / 64)
    assert math.isnan(dyn.noise_variance((1.0, 0, 1.0, 2)))
    equal = (4.0, 4, 4.0, 4)  # no spread between halves: no noise
    first = {0: 1.0, 1: 1.0, 2: 1.0}
    last = {0: 1.1, 1: 1.2, 2: 1.3}  # drift 0.1, 0.2, 0.3 -> excess 0.01, 0.04, 0.09, slope 0.04
    d = dyn.drift_vs_noise(first, last, dict.fromkeys(first, equal), dict.fromkeys(first, equal), [0, 1, 2])
    assert d.excess == pytest.approx([0.01, 0.04, 0.09]) and d.slope == pytest.approx(0.04)
    noisy = (10.0, 5, 9.0, 3)  # subtracts 15 / 64 from each turn's squared change
    d = dyn.drift_vs_noise(first, last, dict.fromkeys(first, noisy), dict.fromkeys(first, equal), [0, 1])
    assert d.turns == [0, 1] and d.excess == pytest.approx([0.01 - 15 / 64, 0.04 - 15 / 64]) and math.isnan(d.slope)


def test_format_tokens_are_removed_and_heads_compared_by_observation():
    def reply(t, anchor, content_h):
        ids = [900, *range(10 * t + 1, 10 * t + 1 + len(content_h)), 901]  # 900/901: the tags of every reply
        return step(t, [0.0, *content_h, 0.0], anchor, ids)

    trajs = [traj("a", "g", [reply(0, "s0", [2.0, 2.0, 1.0, 1.0]), reply(1, "s0", [1.0, 1.0, 1.0, 1.0]),
                             reply(2, "s1", [3.0, 3.0, 1.0])])]
    assert dyn.format_token_ids(trajs) == frozenset({900, 901})
    c = dyn.post_observation_contrast(trajs, n=2)
    # heads (first 2 content tokens): 2.0 (new), 1.0 (repeated s0), 3.0 (new); rests 1.0, 1.0, 1.0
    assert c.content.pairs == 3 and c.content.ratio == pytest.approx((2 + 1 + 3) / 3)
    assert c.log_ratio == pytest.approx(math.log(2.0))
    assert c.new_minus_repeat == pytest.approx((2.0 + 3.0) / 2 - 1.0)
    # the old all-token ratio counts the closing tag (entropy 0) in the rest
    old = dyn.pool_post_observation(dyn.post_observation(trajs, n=3))
    assert old.rest_mean < c.content.rest_mean


def test_heads_after_a_tool_response_are_compared_with_heads_after_none():
    def reply(t, anchor, content_h, **info):
        ids = [900, *range(10 * t + 1, 10 * t + 1 + len(content_h)), 901]
        return step(t, [0.0, *content_h, 0.0], anchor, ids, **info)

    # turn 0 follows the question alone; turn 1 follows a search's results; turn 2 follows a
    # malformed call (no tool response); turn 3 follows a failed open (tool error)
    episode = traj("a", "g", [reply(0, "q", [1.0, 1.0, 0.5], tool_call="search"),
                              reply(1, "results", [3.0, 2.0, 0.5], tool_call="open", invalid_action=True),
                              reply(2, "bad call", [1.5, 1.5, 0.5], tool_call="open", tool_error=True),
                              reply(3, "error", [0.5, 0.5, 0.5], tool_call="answer")])
    assert [tool for _, tool in dyn.follows_tool_response(episode)] == [False, True, False, False]
    c = dyn.post_observation_contrast([episode], n=2)
    # heads: 1.0 (none), 2.5 (after the search), 1.5 (none), 0.5 (none)
    assert (c.head_tool_n, c.head_other_n) == (1, 3)
    assert c.tool_minus_other == pytest.approx(2.5 - (1.0 + 1.5 + 0.5) / 3)
    # an env that names no tool calls: nothing to compare
    plain = traj("b", "g", [reply(0, "q", [1.0, 1.0, 0.5]), reply(1, "r", [3.0, 2.0, 0.5])])
    assert not dyn.reports_tool_calls([plain])
    assert math.isnan(dyn.post_observation_contrast([plain], n=2).tool_minus_other)


def test_claims_table_judges_the_tool_claim_only_on_runs_with_tool_calls():
    rows = dyn.claims_table({"grpo": _strategy(0.5, False, True), "epo": _strategy(0.5, True, False)})
    tool = [r for r in rows if r["claim_id"] == "tool_response"]
    assert [(r["strategy"], r["verdict"], r["note"]) for r in tool] == [
        ("grpo, epo", "n/a", "no tool responses in these runs")]
    with_tools = _strategy(0.5, False, True)
    with_tools["post_obs"].update({"after_tool": 40, "tool_minus_other": {"mean": 0.3, "lo": 0.1, "hi": 0.5, "n": 3}})
    against = _strategy(0.5, True, False)
    against["post_obs"].update({"after_tool": 40, "tool_minus_other": {"mean": -0.3, "lo": -0.5, "hi": -0.1, "n": 3}})
    rows = dyn.claims_table({"grpo": with_tools, "epo": against})
    verdicts = {r["strategy"]: r["verdict"] for r in rows if r["claim_id"] == "tool_response"}
    assert verdicts == {"grpo": "holds", "epo": "does not hold"}


def test_informative_recurrence_drops_the_initial_state_and_no_ops():
    trajs = [visits("a", "g", ["start", "hall", "hall", "kitchen"]),
             visits("b", "g", ["start", "hall", "garden", "garden"]),
             visits("c", "g", ["start", "cellar", "cellar", "cellar"])]
    raw = dyn.state_recurrence(trajs)
    assert (raw.states, raw.recurring) == (5, 2)  # start and hall recur
    clean = dyn.informative_recurrence(trajs)
    # kept visits: a: hall, kitchen; b: hall, garden; c: cellar -> hall recurs, 1 of 4 states
    assert (clean.states, clean.recurring) == (4, 1) and clean.step_group_sizes == {1: 3, 2: 1}


def test_change_before_spike_is_measured_against_the_same_stretch_anywhere():
    trend = [1.0 - 0.1 * k for k in range(8)]
    for spike in range(1, 8):  # a linear decline falls the same before every step
        assert dyn.change_before_spike_vs_any(trend, spike, 3) == pytest.approx(0.0, abs=1e-12)
    dip = list(trend)
    dip[5] -= 0.3
    # w = 3: changes x[p] - x[p-3] for p = 3..7 are -0.3, -0.3, -0.6 (p = 5), -0.3, -0.3: mean -0.36;
    # before the spike -0.6 -> excess -0.6 + 0.36 = -0.24
    assert dyn.change_before_spike_vs_any(dip, 5, 3) == pytest.approx(-0.24)
    assert dyn.collapsed([1.0, 0.8, 0.45]) and not dyn.collapsed([1.0, 0.8, 0.55])


def test_runs_under_the_working_directory_are_named_relative_to_it(tmp_path, monkeypatch):
    """A committed dynamics.json names its runs as a clone sees them, not by this machine's paths."""
    from agentropy.evals.dynamics.analysis import _shown_path

    (tmp_path / "docs" / "aggregates" / "grpo__household__s0").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert _shown_path(tmp_path / "docs" / "aggregates" / "grpo__household__s0") == "docs/aggregates/grpo__household__s0"
    assert _shown_path(tmp_path.parent / "elsewhere") == str(tmp_path.parent / "elsewhere")
