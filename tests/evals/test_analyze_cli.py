"""``agentropy analyze`` on a synthetic micro-bench written to disk in the trainer's formats.

The bench has 2 strategies x 2 seeds. Per-turn entropies are built so that the cumulative
drift of the last iteration against the first is exactly c T^2 for ``grpo`` and c T for
``epo``, so the drift exponents and their verdicts are known in advance.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from agentropy.cli import main
from agentropy.evals import dynamics as dyn
from agentropy.training.trajectory import Step, Trajectory, write_jsonl

ENV_ID = "agentropy/Household-v0"
GROUPS, GROUP_SIZE, TURNS, HEAD = 2, 3, 6, 4


def turn_entropy(strategy: str, k: int, t: int) -> float:
    """Entropy of the 'rest' tokens at iteration k, turn t: drift k·c((t+1)^p - t^p), p = 2 / 1."""
    if strategy == "grpo":
        return 2.0 - 0.01 * k * ((t + 1) ** 2 - t**2)
    return 2.0 - 0.05 * k


def write_run(run_dir: Path, strategy: str, seed: int, iterations: int, env_id: str = ENV_ID,
              reward_std_in_metrics: bool = True, trajectories: bool = True) -> None:
    config = {"run": {"name": run_dir.name, "seed": seed}, "env": {"id": env_id},
              "strategy": {"advantage": {"estimator": "grpo"}, "epo": {"enabled": strategy == "epo"},
                           "empg": {"enabled": False}}}
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    records = [{"iteration": -1, "phase": "sft", "loss": 1.0}, {"iteration": -1, "phase": "eval", "success_rate": 0.1}]
    for k in range(iterations):
        trajs = []
        for g in range(GROUPS):
            for j in range(GROUP_SIZE):
                steps = []
                for t in range(TURNS):
                    h = turn_entropy(strategy, k, t) + 0.001 * seed
                    anchor = f"g{g} room {t}" if t < 3 else f"g{g} traj {j} room {t}"
                    response = list(range(1, 9)) if t == 0 else [100 * j + t, k, seed, *range(50 + t, 100, 10)]
                    entropy = [h + 0.5] * HEAD + [h] * HEAD  # the first HEAD tokens are higher
                    steps.append(Step(turn=t, prompt_ids=[9, 9], response_ids=response, logprobs=[-0.1] * 8,
                                      entropy=entropy, reward=0.0, terminated=t == TURNS - 1, truncated=False,
                                      anchor_obs=anchor, action="look", group_id=f"g{g}", traj_id=f"g{g}-{j}"))
                won = j < 1 + k % 2
                trajs.append(Trajectory(traj_id=f"g{g}-{j}", group_id=f"g{g}", task_id=f"task{g}", seed=g,
                                        steps=steps, episode_return=float(won), won=won))
        if trajectories:
            write_jsonl(trajs, run_dir / "trajectories" / f"iter_{k:06d}_rank0.jsonl")
        tokens = [h for tr in trajs for s in tr.steps for h in s.entropy]
        record = {"iteration": k, "phase": "train", "success_rate": 0.2 + 0.1 * k, "return_mean": 0.2 + 0.1 * k,
                  "entropy_mean": sum(tokens) / len(tokens), "grad_norm": 5.0 if k == 3 else 1.0 + 0.01 * k,
                  "time_s": 1.0}
        if reward_std_in_metrics:
            record["reward_std"] = 0.5 - 0.05 * k
        records.append(record)
    records.append({"iteration": iterations, "phase": "eval", "success_rate": 0.5})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench") / "micro"
    for strategy in ("grpo", "epo"):
        for seed in (0, 1):
            iterations = 5 if (strategy, seed) == ("epo", 1) else 6  # runs of different lengths
            write_run(root / f"{strategy}__household__s{seed}", strategy, seed, iterations,
                      reward_std_in_metrics=strategy == "grpo")
    write_run(root / "init__household", "grpo", 0, 1)  # the shared SFT folder: skipped
    return root


@pytest.fixture(scope="module")
def analyzed(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "dynamics"
    assert main(["analyze", str(bench), "--out", str(out), "--no-progress"]) == 0
    return out, json.loads((out / "dynamics.json").read_text())


SUMMARY = re.compile(r"(\w+) = (\S+) \[(\S+), (\S+)\]")


def _number(text: str) -> float | None:
    return None if text == "NaN" else float(text)


def test_claims_table_rows_match_the_numbers_in_dynamics_json(analyzed):
    out, data = analyzed
    md = (out / "dynamics.md").read_text()
    assert md.startswith("# Entropy dynamics: agentropy/Household-v0")
    table = md.split("## Claims table", 1)[1].split("**Verdict rule.**", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| # ")]
    assert len(rows) == len(data["claims"])
    # recurrence is measured on identical rollouts of the two strategies: one row for both; Household
    # names no tool calls and neither run branched, so the tool and branching claims are one n/a row for both
    merged = {r["claim_id"] for r in data["claims"] if r["strategy"] == "epo, grpo"}
    assert merged == {"recurrence", "recurrence_late", "tool_response", "branch_entropy"}
    assert len(rows) == len(dyn.CLAIMS) * 2 - 4
    tool = next(r for r in data["claims"] if r["claim_id"] == "tool_response")
    assert (tool["verdict"], tool["note"]) == ("n/a", "no tool responses in these runs")
    seen = set()
    for line, row in zip(rows, data["claims"], strict=True):
        cells = [c.strip().replace("\\|", "|") for c in line.strip("|").split(" | ")]
        assert len(cells) == 8
        claim_text = "" if row["claim_id"] in seen else row["claim"]  # written on a claim's first row
        seen.add(row["claim_id"])
        assert cells[1] == claim_text and cells[4] == row["strategy"] and cells[5] == str(row["seeds"])
        assert cells[7].startswith(row["verdict"])
        found = SUMMARY.findall(cells[6])
        assert [name for name, *_ in found] == list(row["values"])
        for name, *numbers in found:
            expected = row["values"][name]
            for text, key in zip(numbers, ("mean", "lo", "hi"), strict=True):
                if expected[key] is None:
                    assert text == "NaN"
                else:
                    assert _number(text) == pytest.approx(expected[key], rel=1e-3, abs=1e-9)


def test_known_answers_and_verdicts(analyzed):
    _, data = analyzed
    grpo, epo = data["strategies"]["grpo"], data["strategies"]["epo"]
    assert grpo["runs"] == ["grpo__household__s0", "grpo__household__s1"] and grpo["seeds"] == [0, 1]
    assert grpo["baseline"] and not grpo["corridor"] and epo["corridor"] and epo["methods"] == ["epo"]
    assert grpo["drift"]["p"]["mean"] == pytest.approx(2.0, abs=1e-6)
    assert epo["drift"]["p"]["mean"] == pytest.approx(1.0, abs=1e-6)
    # grpo's last-iteration drift at turn t is 0.01 k (2t + 1) with k = 5 and no sampling noise (every
    # reply of a turn has the same entropy): excess_t = (0.05 (2t + 1))^2, slope 0.06 over t = 0..5
    assert grpo["drift"]["slope"]["mean"] == pytest.approx(0.06, abs=1e-9)
    # epo's shift is the same at every turn (0.05 k): excess 0.25^2 (s0, k = 5) and 0.2^2 (s1, k = 4), slope 0
    assert epo["drift"]["excess"]["mean"] == pytest.approx((0.0625 + 0.04) / 2)
    assert epo["drift"]["slope"]["mean"] == pytest.approx(0.0, abs=1e-12)
    verdicts = {(r["claim_id"], r["strategy"]): r["verdict"] for r in data["claims"]}
    assert verdicts[("drift", "grpo")] == "holds"
    assert verdicts[("drift", "epo")] == "not distinguishable from noise"  # absence is never confirmed
    assert verdicts[("decline", "grpo")] == "holds" and verdicts[("decline", "epo")] == "n/a"
    # head tokens are 0.5 nats higher than the rest (log((h + 0.5) / h) > 0), but no observation ever
    # repeats, so there is no comparison group and the claim cannot hold
    assert grpo["post_obs"]["log_ratio"]["mean"] > 0.1 and grpo["post_obs"]["new_minus_repeat"]["n"] == 0
    assert verdicts[("post_obs", "grpo")] == "not distinguishable from noise"
    # the rollouts never collapse (entropy falls by far less than half): no echo-trap verdicts
    assert verdicts[("collapse_entropy", "grpo")] == "no collapse to test" == verdicts[("repeated", "grpo")]
    # states of turns 0-2 are shared by the 3 trajectories of a group, turns 3-5 are not: 6 of 24
    assert grpo["recurrence"]["fraction_first"]["mean"] == pytest.approx(6 / 24)
    assert verdicts[("recurrence", "epo, grpo")] == "does not hold"
    # without the initial state (turn 0) the shared states are turns 1-2: 4 of 22 per run
    assert grpo["recurrence"]["informative_first"]["mean"] == pytest.approx(4 / 22)
    assert grpo["recurrence"]["step_group_sizes_first"] == {"1": 2 * 2 * 9, "3": 2 * 2 * 3}
    assert grpo["per_run"][0]["collapse"]["spike_step"] == 3
    assert grpo["collapse"]["d_reward_std"]["mean"] == pytest.approx(-0.15)  # from metrics: 0.35 - 0.5
    # epo has no reward_std in its metrics: the trajectories give it (returns alternate 1/3, 2/3 won)
    assert epo["per_run"][0]["reward_std"][:2] == pytest.approx([math.sqrt(2) / 3, math.sqrt(2) / 3])
    assert grpo["repeated"]["first"]["mean"] == pytest.approx((2 * 2) / (GROUPS * GROUP_SIZE * TURNS))
    # Exp law R = -a exp(H) + b on grpo's train records: R_k = 0.2 + 0.1 k and H_k = entropy_mean =
    # mean over turns t = 0..5 of (2 - 0.01 k (2t + 1) + 0.001 seed) + 0.25 (half the tokens are 0.5
    # higher) = 2.25 + 0.001 seed - 0.06 k, since the mean of 2t + 1 is 36 / 6 = 6. With x_k = exp(H_k)
    # = c exp(-0.06 k), R² = corr(x, R)² = corr(exp(-0.06 k), k)² (c and the linear map k -> R drop out),
    # the same for both seeds. Over k = 0..5: exp(-0.06 k) = 1, 0.941765, 0.886920, 0.835270, 0.786628,
    # 0.740818, mean 0.865234; S_xk = sum (x - 0.865234)(k - 2.5) = -0.906485, S_xx = 0.047045,
    # S_kk = 17.5; R² = 0.906485² / (0.047045 * 17.5) = 0.998086.
    assert grpo["exp_law"]["r2"]["mean"] == pytest.approx(0.998086, abs=2e-6)
    assert [run["exp_law"]["r2"] for run in grpo["per_run"]] == pytest.approx([0.998086] * 2, abs=2e-6)


def test_runs_of_different_lengths_are_aligned_not_truncated(analyzed):
    _, data = analyzed
    epo = data["strategies"]["epo"]
    assert epo["steps_per_run"] == {"epo__household__s0": 6, "epo__household__s1": 5}
    assert not epo["equal_length"]
    assert epo["entropy_by_step"]["steps"] == [0, 1, 2, 3, 4, 5]
    assert epo["entropy_by_step"]["n_runs"] == [2, 2, 2, 2, 2, 1]
    assert [r["drift"]["at_step"] for r in epo["per_run"]] == [5, 4]  # each run's own last step
    assert epo["entropy_map"]["n_runs"][0] == [2, 2, 2, 2, 2, 1]


def test_figures_exist(analyzed):
    out, data = analyzed
    for name in ("exp_law", "entropy_vs_step", "drift", "post_observation", "recurrence", "collapse",
                 "repeated_outputs", "entropy_map_grpo", "entropy_map_epo"):
        png = out / "figures" / f"{name}.png"
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    assert all((out / path).exists() for path in data["figures"].values())
    md = (out / "dynamics.md").read_text()
    assert "](figures/drift.png)" in md and "](figures/entropy_map_epo.png)" in md


def test_one_seed_gives_a_nan_interval_and_an_inconclusive_verdict(bench, tmp_path):
    out = tmp_path / "one"
    assert main(["analyze", str(bench / "grpo__household__s0"), "--out", str(out), "--no-progress"]) == 0
    data = json.loads((out / "dynamics.json").read_text())
    p = data["strategies"]["grpo"]["drift"]["p"]
    assert p["n"] == 1 and p["lo"] is None and p["hi"] is None
    verdicts = {r["claim_id"]: r["verdict"] for r in data["claims"]}
    assert verdicts.pop("tool_response") == "n/a"  # Household names no tool calls
    assert verdicts.pop("branch_entropy") == "n/a"  # and GRPO does not branch
    assert set(verdicts.values()) == {"not distinguishable from noise", "no collapse to test"}
    assert "slope = 0.06 [NaN, NaN]" in (out / "dynamics.md").read_text()


def test_run_without_trajectories_is_named(tmp_path):
    write_run(tmp_path / "grpo_a", "grpo", 0, 3)
    write_run(tmp_path / "grpo_b", "grpo", 1, 3, trajectories=False)
    with pytest.raises(SystemExit, match=r"grpo_b: no trajectories"):
        main(["analyze", str(tmp_path / "grpo_a"), str(tmp_path / "grpo_b"), "--out", str(tmp_path / "o"),
              "--no-progress"])


def test_run_with_a_different_env_is_named(tmp_path):
    write_run(tmp_path / "a", "grpo", 0, 3)
    write_run(tmp_path / "b", "grpo", 1, 3, env_id="agentropy/ALFWorld-v0")
    with pytest.raises(SystemExit, match=r"b: env.id is 'agentropy/ALFWorld-v0' but .*a has 'agentropy/Household-v0'"):
        main(["analyze", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o"), "--no-progress"])


def test_bench_with_two_envs_can_be_filtered_by_env(tmp_path):
    write_run(tmp_path / "grpo__household__s0", "grpo", 0, 3)
    write_run(tmp_path / "grpo__alfworld__s0", "grpo", 0, 3, env_id="agentropy/ALFWorld-v0")
    with pytest.raises(SystemExit, match="--env"):
        main(["analyze", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"])
    assert main(["analyze", str(tmp_path), "--env", "alfworld", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    data = json.loads((tmp_path / "o" / "dynamics.json").read_text())
    assert data["meta"]["env_id"] == "agentropy/ALFWorld-v0" and data["strategies"]["grpo"]["runs"] == ["grpo__alfworld__s0"]


def test_plain_run_folders_get_their_label_from_the_config(tmp_path):
    write_run(tmp_path / "r1", "epo", 3, 3)
    runs = dyn.load_runs([tmp_path / "r1"], progress=False)
    assert (runs[0].strategy, runs[0].seed, runs[0].methods) == ("epo", 3, ["epo"])


def test_folder_that_is_neither_run_nor_bench_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="empty: neither a run folder"):
        main(["analyze", str(tmp_path / "empty"), "--no-progress"])
    with pytest.raises(SystemExit, match="missing: not a folder"):
        main(["analyze", str(tmp_path / "missing"), "--no-progress"])


def test_drift_uses_only_turns_with_enough_replies(bench):
    runs = dyn.load_runs([bench / "grpo__household__s0"], progress=False)
    assert runs[0].iterations[0].turn_replies == dict.fromkeys(range(TURNS), GROUPS * GROUP_SIZE)
    ok = dyn.analyze(runs, dyn.Options(min_turn_replies=GROUPS * GROUP_SIZE))["strategies"]["grpo"]["per_run"][0]
    assert ok["drift"]["n"] == TURNS and ok["drift"]["p"] == pytest.approx(2.0)
    too_few = dyn.analyze(runs, dyn.Options(min_turn_replies=GROUPS * GROUP_SIZE + 1))["strategies"]["grpo"]
    assert too_few["per_run"][0]["drift"]["D"] == [] and too_few["drift"]["p"]["n"] == 0


def test_committed_aggregates_regenerate_the_report(analyzed, tmp_path):
    """analyze writes per-iteration aggregates next to its report; analyzing them (no trajectories)
    gives the same claims and numbers."""
    out, data = analyzed
    aggregates = out / "aggregates"
    assert sorted(p.name for p in aggregates.iterdir()) == sorted(
        data["strategies"]["grpo"]["runs"] + data["strategies"]["epo"]["runs"])
    again = tmp_path / "again"
    assert main(["analyze", str(aggregates), "--out", str(again), "--no-progress"]) == 0
    regenerated = json.loads((again / "dynamics.json").read_text())
    assert regenerated["claims"] == data["claims"]
    assert regenerated["strategies"]["grpo"]["drift"] == data["strategies"]["grpo"]["drift"]
    with pytest.raises(SystemExit, match="head-tokens 4, not 3"):
        main(["analyze", str(aggregates), "--head-tokens", "3", "--out", str(tmp_path / "x"), "--no-progress"])


def test_top_k_entropies_get_a_footnote_that_survives_the_aggregates(analyzed, tmp_path):
    out, _ = analyzed
    assert "Entropies are estimates" not in (out / "dynamics.md").read_text()
    for seed in (0, 1):
        run = tmp_path / "bench" / f"grpo__household__s{seed}"
        write_run(run, "grpo", seed, 3)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for r in records:
            if r["phase"] == "train":
                r.update(entropy_estimate="top-k lower bound", entropy_top_k=20)
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    note = ("Entropies are estimates: lower bounds computed from the top-20 log-probs the backend returns "
            "per token (the missing probability mass counted as one outcome), not the full-vocabulary entropy.")
    assert main(["analyze", str(tmp_path / "bench"), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert note in (tmp_path / "o" / "dynamics.md").read_text()
    assert main(["analyze", str(tmp_path / "o" / "aggregates"), "--out", str(tmp_path / "o2"), "--no-progress"]) == 0
    assert note in (tmp_path / "o2" / "dynamics.md").read_text()


def test_seeds_of_one_config_keep_separate_aggregates(tmp_path):
    """Seeds run as `agentropy train CONFIG run.seed=k run.root=<k>` share the run folder's name;
    each keeps its own aggregates folder, so the regenerated report still has every seed."""
    runs = [tmp_path / f"root{seed}" / "search" for seed in (0, 1)]
    for seed, run in enumerate(runs):
        write_run(run, "grpo", seed, 4)
    out = tmp_path / "out"
    assert main(["analyze", *map(str, runs), "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in (out / "aggregates").iterdir()) == ["search__s0", "search__s1"]
    again = tmp_path / "again"
    assert main(["analyze", str(out / "aggregates"), "--out", str(again), "--no-progress"]) == 0
    first, second = (json.loads((d / "dynamics.json").read_text()) for d in (out, again))
    assert len(second["strategies"]["grpo"]["runs"]) == 2
    assert second["claims"] == first["claims"]


def test_aggregate_folder_names_are_distinct():
    from agentropy.evals.dynamics.aggregates import aggregate_folder_names
    from agentropy.evals.dynamics.records import RunData

    def run(path: str, seed: int) -> RunData:
        return RunData(Path(path), "grpo", ENV_ID, seed, [], {}, {})

    names = aggregate_folder_names([run("a/x", 0), run("b/x", 1), run("c/y", 0), run("d/z", 2), run("e/z", 2)])
    assert names == ["x__s0", "x__s1", "y", "z__s2__1", "z__s2__2"]
