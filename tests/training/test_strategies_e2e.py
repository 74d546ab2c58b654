"""End to end: a short CPU run of every shipped strategy config through ``trainer.train``.

Each run is 2 tasks x 2 samples, 3 turns, 12 tokens, 2 iterations, starting from one shared
SFT'd tiny model (built once for the module, so the policy emits parseable actions and returns
differ within groups: advantages, STEER weights, EDC statistics and SPEAR's buffer see real
values). Every run must finish and log its method's metrics in ``metrics.jsonl``. A few
overrides make the code paths run at this size: SPEAR's buffer is 1 so its replay fires,
ArbEPO keeps every ``T_k`` episode (``adv_threshold: -1``) so the splice, ``A := 1`` and the
regularisation token weight are exercised, and Clip_B / Clip_V get ``mu = 1`` so they drop
tokens. The top rung of the ablation ladder (every method of the ladder at once) runs too.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from agentropy.configuration import ConfigError
from agentropy.training.checkpoint import latest_checkpoint, load_checkpoint
from agentropy.training.config import load_config
from agentropy.training.run_log import read_metrics
from agentropy.training.trainer import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
# COMMON: overrides shared by the SFT start and every run (the prompt layout must match the SFT's),
# the same sizes the behaviour lock records with.
from behaviour import COMMON, TOP_RUNG  # noqa: E402

STRATEGIES = Path(__file__).resolve().parents[2] / "configs" / "strategies"
SHIPPED = sorted(p.stem for p in STRATEGIES.glob("*.yaml"))

# The metrics each method must log in every train record.
KEYS = {
    "grpo": ["adv/base_abs_mean", "loss/pg", "clipfrac"],
    "epo": ["epo/entropy", "epo/smooth", "epo/beta", "loss/epo"],
    "epo_corridor": ["epo/entropy", "epo/smooth", "epo/viol_low", "epo/viol_high", "loss/epo"],
    "empg": ["empg/g_min", "empg/g_max", "empg/bonus_mean"],
    "aepo": ["sg_frac", "sg_grad_share"],
    "spear": ["spear/buffer_size", "spear/sil_weight", "spear/tool_reward_mean", "clip_cov_frac"],
    "clip_cov": ["clip_cov_frac", "clip_cov_candidates"],
    "all": ["epo/entropy", "empg/g_min", "sg_frac", "spear/buffer_size", "clip_cov_frac"],
    "steer": ["steer/w_mean", "steer/w_min", "steer/frac_at_wmin", "steer/omega_abs_max"],
    "siren": ["siren/anchor", "siren/h_sel", "siren/reg_loss", "siren/frac_selected", "siren/nucleus_size_mean"],
    "clip_b": ["edc/dropped_fraction", "edc/S_mean", "edc/S_var"],
    "clip_v": ["edc/dropped_fraction", "edc/D_std", "edc/cap_hit", "edc/pred_dH_all"],
    "arbepo": ["arbepo/temperature", "arbepo/n_reg", "arbepo/n_kept", "arbepo/H_state", "arbepo/frac_reg_tokens",
               "arbepo/rollout_episodes"],
    "canon": ["canon/gap_mean", "canon/mu", "canon/h_median_mean", "canon/adv_abs_mean"],
}
KEYS[TOP_RUNG] = ["canon/gap_mean", "steer/w_mean", "steer/w_mean_zpos", "siren/anchor", "siren/h_sel",
                  "spear/buffer_size", "empg/g_min", "sg_frac", "aepo/factor_min"]

EXTRA = {
    "spear": ["strategy.spear.buffer_size=1"],
    "arbepo": ["strategy.arbepo.adv_threshold=-1.0", "strategy.arbepo.reg_max=2",
               "strategy.arbepo.reg_token_weight=0.5"],
    "clip_b": ["strategy.clip_b.mu=1.0"],
    "clip_v": ["strategy.clip_v.mu=1.0", "strategy.clip_v.max_frac=0.05"],
    TOP_RUNG: ["strategy.spear.buffer_size=1"],
    # one update per iteration over one micro-batch holding every row: the first update's H^sel is
    # then computed by the policy the anchor was recomputed with, on the same rows
    "siren": ["train.mini_batches=1", "train.ppo_epochs=1", "train.micro_batch_size=16"],
}


# Wall-clock measurements, which differ between any two runs, by exact name: every other metric
# (env_steps, *_std, ...) must match.
TIMING_KEYS = frozenset({
    "time_s", "generate_s", "env_s", "prompt_s", "rollout_s", "overhead", "env_steps_per_s", "tokens_per_s",
    "learner_tokens_per_s", "arbepo/rollout_s", "aepo/probe_generate_s",
})


@pytest.fixture(scope="module")
def start_model(tmp_path_factory):
    """The tiny model after a short SFT, shared by every run (as the bench shares its start)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("strategies")
    cfg = load_config(None, [*COMMON, f"run.root={root}", "run.name=init", f"model.tiny_dir={root / 'tiny'}",
                             "sft.episodes=30", "sft.epochs=3", "sft.batch_size=16", "sft.lr=2.0e-3",
                             "train.iterations=0"])
    train(cfg)
    return root, root / "init" / "final_model"


def _run(start_model, name, extra=(), run_name=None):
    root, model = start_model
    run_name = run_name or name.replace("/", "_")
    cfg = load_config(STRATEGIES / f"{name}.yaml", [
        *COMMON, f"run.root={root}", f"run.name={run_name}", f"model.path={model}", "sft.enabled=false",
        "train.iterations=2", *EXTRA.get(name, []), *extra])
    train(cfg)
    return root / run_name


def test_every_shipped_strategy_has_expected_metrics():
    assert {*SHIPPED, TOP_RUNG} == set(KEYS), "a shipped strategy config has no e2e expectations (or one is missing)"


@pytest.mark.parametrize("name", [*SHIPPED, TOP_RUNG])
def test_strategy_runs_end_to_end_and_logs_its_metrics(start_model, name):
    torch.set_num_threads(1)
    run = _run(start_model, name)
    train_records = [r for r in read_metrics(run) if r["phase"] == "train"]
    assert [r["iteration"] for r in train_records] == [0, 1]
    for rec in train_records:
        missing = [k for k in KEYS[name] if k not in rec]
        assert not missing, f"{name}: iteration {rec['iteration']} lacks {missing}"
        assert math.isfinite(rec["loss"]) and math.isfinite(rec["grad_norm"])
        for key in KEYS[name]:
            assert isinstance(rec[key], float) and math.isfinite(rec[key]), (name, key, rec[key])
    first = train_records[0]
    if name in ("spear", TOP_RUNG):
        assert max(r.get("spear/replay_samples", 0.0) for r in train_records) > 0
    if name == "steer":
        assert all(0.8 - 1e-6 <= r["steer/w_min"] <= r["steer/w_mean"] <= 1.0 for r in train_records)
    if name == "siren":  # anchored on the first batch: the selected entropy starts at the anchor
        # H_anchor is H^sel of the recompute pass under pi_old; the first update's H^sel is the same
        # mean over the same selected positions under the same weights (only float rounding differs),
        # so its penalty lambda (H^sel - H_anchor)^2 starts at 0
        assert first["siren/h_sel"] == pytest.approx(first["siren/anchor"], rel=1e-5, abs=1e-6)
        assert first["siren/reg_loss"] == pytest.approx(0.0, abs=1e-9)
        assert all(r["siren/anchor"] == first["siren/anchor"] for r in train_records)
    if name in ("clip_b", "clip_v"):
        assert all(0.0 <= r["edc/dropped_fraction"] < 0.5 and r["edc/frac_clipped_pos"] == 0.0 for r in train_records)
        assert max(r["edc/dropped_fraction"] for r in train_records) > 0
    if name == "arbepo":
        assert first["arbepo/temperature"] == 1.2  # H_state starts at 0 <= H* = 0.5: heat
        assert first["arbepo/n_reg"] >= 1 and first["arbepo/frac_reg_tokens"] > 0
        state = load_checkpoint(latest_checkpoint(run))["extra"]["update_state"]["arbepo"]
        assert state["updates"] == 2 and state["h_state"] == pytest.approx(train_records[-1]["arbepo/H_state_next"])
    if name == "siren":
        state = load_checkpoint(latest_checkpoint(run))["extra"]["update_state"]["siren_anchor"]
        assert state["value"] == pytest.approx(first["siren/anchor"])
    if name == "canon":
        assert first["canon/mu"] == 1.0


def test_config_refuses_two_closed_loop_entropy_controllers_naming_the_fields():
    with pytest.raises(ConfigError) as err:
        load_config(STRATEGIES / "siren.yaml", ["strategy.arbepo.enabled=true"])
    text = str(err.value)
    assert "strategy.siren.enabled" in text and "strategy.arbepo.enabled" in text
    assert "allow_multi_entropy_controllers" in text
    with pytest.raises(ConfigError, match=r"strategy\.epo\.enabled"):
        load_config(STRATEGIES / "epo.yaml", ["strategy.arbepo.enabled=true"])
    cfg = load_config(STRATEGIES / "siren.yaml",
                      ["strategy.arbepo.enabled=true", "strategy.allow_multi_entropy_controllers=true"])
    assert cfg.strategy.enabled() == ["arbepo", "siren"]
    # EPO without its corridor hinge (alpha = 0) has no set-point: not a controller.
    load_config(STRATEGIES / "arbepo.yaml", ["strategy.epo.enabled=true", "strategy.epo.alpha=0.0"])
    with pytest.raises(ConfigError, match=r"strategy\.clip_b\.enabled and strategy\.clip_v\.enabled"):
        load_config(STRATEGIES / "clip_b.yaml", ["strategy.clip_v.enabled=true"])


def test_composed_update_does_not_depend_on_the_micro_batch_size(start_model):
    """ArbEPO + CANON + STEER + Clip_V in one run: STEER's mini-batch |Omega| range (a no-grad
    pre-pass when a mini-batch spans several micro-batches), the Clip_V denominator sum m' and
    the regularisation token weight make the update independent of ``micro_batch_size``."""
    torch.set_num_threads(1)
    extra = ["strategy.canon.enabled=true", "strategy.steer.enabled=true", "strategy.clip_v.enabled=true",
             "strategy.clip_v.mu=1.0", "strategy.clip_v.max_frac=0.05", "train.iterations=1"]
    records = []
    for micro in (8, 2):
        run = _run(start_model, "arbepo", [*extra, f"train.micro_batch_size={micro}"], run_name=f"micro{micro}")
        records.append(next(r for r in read_metrics(run) if r["phase"] == "train"))
    big, small = records
    assert big["arbepo/n_reg"] >= 1 and big["edc/dropped_fraction"] > 0 and big["steer/w_min"] < 1.0
    for key in ("arbepo/n_reg", "edc/dropped_fraction", "canon/gap_mean", "samples"):
        assert small[key] == big[key], key
    for key in ("loss", "grad_norm"):
        assert small[key] == pytest.approx(big[key], rel=1e-5, abs=1e-7), key


def test_ablation_bench_lists_the_cumulative_ladder():
    """configs/bench/ablation.yaml (docs/methods/README.md): every rung includes the one before it
    and adds exactly one method (the last one turns on AEPO's branching rollout)."""
    import yaml

    from agentropy.configuration import from_dict, read_yaml
    from agentropy.evals.bench import load_bench
    from agentropy.training.strategy_config import StrategyConfig

    bench, folder = load_bench(STRATEGIES.parent / "bench" / "ablation.yaml")
    assert list(bench.envs) == ["household"] and bench.base == "../household.yaml"
    ladder = STRATEGIES / "ladder"
    assert {(folder / f).resolve() for f in bench.strategies.values()} == {p.resolve() for p in ladder.glob("*.yaml")}

    def strategy(path):
        cfg = from_dict(StrategyConfig, read_yaml(path)["strategy"])
        cfg.validate()
        return cfg

    main_path = []
    for label, rel in bench.strategies.items():
        path = folder / rel
        cfg = strategy(path)
        includes = yaml.safe_load(path.read_text()).get("include", [])
        if label == "l0_drbot":
            assert includes == [] and cfg.enabled() == []
            assert not cfg.advantage.norm_by_std and cfg.policy_loss.agg == "seq-mean-token-sum-norm"
            assert (cfg.policy_loss.clip_high, cfg.policy_loss.dual_clip, cfg.policy_loss.kl_coef) == (0.28, 10.0, 0.0)
            continue
        assert len(includes) == 1 and (path.parent / includes[0]).exists()
        parent = strategy(path.parent / includes[0])
        added = set(cfg.enabled()) - set(parent.enabled())
        assert set(parent.enabled()) <= set(cfg.enabled())
        if label == "l7_aepo_rollout":
            assert not added and cfg.aepo.branching and not parent.aepo.branching
        else:
            assert len(added) == 1, (label, added)
        if not label.startswith(("l2_clip", "l3_arbepo", "l3_epo")):
            main_path.append(label)
    assert main_path == ["l1_canon", "l2_steer", "l3_siren", "l4_spear", "l5_empg", "l6_aepo_loss", "l7_aepo_rollout"]


def test_resume_restores_the_arbepo_controller_and_the_siren_anchor(start_model):
    """A run cut after 2 of 4 iterations and resumed logs exactly what the straight run logs:
    the controller state, the frozen anchor (not re-anchored on resume) and everything else."""
    import json

    torch.set_num_threads(1)
    root, _ = start_model
    extra = ["strategy.siren.enabled=true", "strategy.allow_multi_entropy_controllers=true",
             "strategy.steer.enabled=true", "strategy.canon.enabled=true", "strategy.clip_v.enabled=true",
             "strategy.clip_v.mu=1.0", "train.iterations=4", "train.checkpoint_every=1"]
    _run(start_model, "arbepo", extra, run_name="resume_straight")
    _run(start_model, "arbepo", [*extra, "train.stop_after=2"], run_name="resume_cut")
    train(load_config(root / "resume_cut" / "config.yaml", ["train.stop_after=null"]), resume=True)

    def train_records(name):
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
                for r in read_metrics(root / name) if r["phase"] == "train"]

    straight, resumed = train_records("resume_straight"), train_records("resume_cut")
    assert [r["iteration"] for r in resumed] == [0, 1, 2, 3]
    assert "siren/anchor_turns" not in resumed[2]  # the anchor came from the checkpoint
    assert {"env_steps", "generate_calls"} <= set(resumed[2])  # counts are compared, not filtered out
    assert json.dumps(straight[2:], sort_keys=True) == json.dumps(resumed[2:], sort_keys=True)


def test_length_sorted_micro_batches_give_the_same_update_as_shuffled_ones(start_model):
    """``train.micro_batch_order=by_length`` regroups rows into forward passes by length, and
    ``grouped`` also forwards identical rows once; the micro-batch weights keep the summed loss
    that of the mini-batch, so GRPO's loss and gradient norm agree with the shuffled order up to
    float rounding."""
    torch.set_num_threads(1)
    records = []
    for order in ("shuffled", "by_length", "grouped"):
        run = _run(start_model, "grpo", ["train.iterations=1", "train.micro_batch_size=3",
                                         f"train.micro_batch_order={order}"], run_name=f"order_{order}")
        records.append(next(r for r in read_metrics(run) if r["phase"] == "train"))
    shuffled = records[0]
    for other in records[1:]:
        assert other["samples"] == shuffled["samples"]
        for key in ("loss", "grad_norm"):
            assert other[key] == pytest.approx(shuffled[key], rel=1e-5, abs=1e-7), key
