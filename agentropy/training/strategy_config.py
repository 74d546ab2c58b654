"""Configuration of the policy loss, the advantage estimator and the entropy strategies.

One dataclass per method block; every constant of a method is a field whose default is the
one its page under ``docs/methods/`` documents. A strategy is configuration, not a subclass:
any subset of blocks may be enabled, and the update applies them in the fixed order of
:data:`agentropy.training.methods.METHODS` (``docs/methods/README.md``).
:meth:`StrategyConfig.validate` turns the composition rules of that page into checks:
contradictory settings raise, risky-but-legal ones come back as warnings, and
:func:`entropy_controllers.validate_controllers` adds the checks between entropy controllers
(at most one closed-loop entropy controller unless ``allow_multi_entropy_controllers``).

In a YAML config the block lives under ``strategy:``; the shipped
``configs/strategies/*.yaml`` hold only overrides of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from agentropy.training.entropy_controllers import validate_controllers

AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


@dataclass
class PolicyLossConfig:
    """The on-policy surrogate (docs/methods/base.md)."""

    clip_low: float = 0.2  # eps_l: ratio held >= 1 - eps_l for A < 0
    clip_high: float = 0.2  # eps_h: ratio held <= 1 + eps_h for A > 0; 0.28 = DAPO clip-higher
    dual_clip: float | None = 3.0  # dual clip c for A < 0 (verl 3; SPEAR/Clip-Cov scripts 10); null = off
    agg: AggMode = "token-mean"  # loss aggregation mode for every term
    agg_max_len: int | None = None  # L_max of seq-mean-token-sum-norm; null = padded reply length
    kl_coef: float = 0.0  # weight of the k3 KL to the reference policy; 0 = no reference model
    entropy_coef: float = 0.0  # plain token-mean entropy bonus (verl entropy_coeff); EPO has its own


@dataclass
class AdvantageConfig:
    """Base advantage: GRPO or GiGPO."""

    estimator: Literal["grpo", "gigpo"] = "grpo"  # base estimator
    norm_by_std: bool = True  # GRPO divides by the group std; false = Dr.GRPO / Dr.BoT
    eps: float = 1e-6  # epsilon added to the std
    # group statistics over step-samples (verl-agent) or over trajectories
    episode_stats: Literal["all_steps", "per_trajectory"] = "all_steps"
    gamma: float = 0.95  # GiGPO step-return discount
    omega: float = 1.0  # GiGPO step-advantage weight, step_advantage_w
    mode: Literal["mean_norm", "mean_std_norm"] = "mean_norm"  # GiGPO normalisation F
    # GiGPO with AEPO branches: how copies of a shared prefix step count
    shared_prefix: Literal["none", "once", "episode_only"] = "none"


@dataclass
class EPOConfig:
    """EPO: trajectory entropy bonus + corridor hinge against the per-turn history."""

    enabled: bool = False  # turn EPO on
    entropy_coef: float = 1e-3  # lambda, the weight of [L^H - beta_k L^smooth]
    kappa_l: float = 0.0  # corridor floor, x the reference; 0 = no floor (reported runs)
    kappa_r: float = 2.0  # corridor ceiling, x the reference (reported runs)
    alpha: float = 0.1  # hinge weight (ALFWorld 0.1, ScienceWorld 0.05); theory wants alpha * beta_max < 1
    gamma: float = 3.0  # decay of beta_k = 1 + exp(-gamma k / k_mid)
    mode: Literal["token", "seq"] = "token"  # hinge on each token or on each row's mean entropy
    entropy_bonus: bool = True  # include L^H; false keeps only the hinge (docs/methods/README.md)
    schedule_steps: int | None = None  # K of the beta schedule; null = the run's total iterations
    smooth_start_step: int = 0  # no hinge before this iteration (option: after the tool-reward phase)
    include_current_step: bool = False  # reference over m <= k (code) instead of m < k (paper)


@dataclass
class EMPGConfig:
    """EMPG: step-entropy modulation of the advantage."""

    enabled: bool = False  # turn EMPG on
    k: float = 1.0  # temperature of g(H) = exp(-k H~) / mean
    k_prime: float = 1.0  # temperature of the future-clarity bonus f = exp(-k' H~_next)
    zeta: float = 0.05  # bonus weight (paper value not found; ARLArena 0.05)
    eps: float = 1e-8  # epsilon of the min-max normalisation


@dataclass
class AEPOConfig:
    """AEPO: entropy-balanced rollout and policy optimisation (docs/methods/aepo.md)."""

    enabled: bool = False  # turn AEPO on (the switches below pick its parts)
    sg_clip: bool = True  # stop-gradient upper clip, gradient 1 + eps_h on clipped A > 0 tokens
    sg_clip_high_entropy_only: bool = True  # sg bound only where the token's entropy z-score > 0
    entropy_advantage: bool = True  # A * (1 + a z_H) token factor
    adv_weight: float = 0.2  # a of the factor; keep <= 0.2
    z_scope: Literal["step", "batch"] = "step"  # z-score within each step or over the batch
    branching: bool = True  # rollout: entropy-based branching at tool rounds (needs env forking)
    dynamic_rollouts: bool = False  # rollout: entropy pre-monitoring splits global/branch budget
    rollout_budget: int | None = None  # k, total trajectories per prompt; null = the group size
    initial_rollouts: int | None = None  # global samples N without pre-monitoring; null = k / 2
    beam_size: int = 2  # Z + 1: at most one fork per source per round
    branch_threshold: float = 0.5  # tau: fork iff score >= tau
    entropy_weight: float = 0.2  # beta/gamma on Delta H in the branch score
    consecutive_penalty: float = 0.05  # slope of P^(l): score x max(0, 1 - 0.05 l)
    premonitor_beta: float = 0.5  # beta_pm of m = k sigma(beta_pm (H_root - H_tool))
    entropy_window_tokens: int = 20  # first tokens of a segment used for the rollout entropy
    entropy_topk: int = 10  # top-k log-probs per position of the rollout entropy proxy
    premonitor_max_tokens: int = 50  # generation cap of the pre-monitoring answer start


@dataclass
class ClipCovConfig:
    """Clip-Cov on on-policy tokens."""

    enabled: bool = False  # turn Clip-Cov on
    ratio: float = 2e-4  # r: fraction of valid tokens whose loss is zeroed
    cov_lb: float = 1.0  # omega_lo: candidates have cov_lb < c_n
    cov_ub: float = 5.0  # omega_hi: candidates have c_n < cov_ub


@dataclass
class KLCovConfig:
    """KL-Cov, an alternative loss with no ratio clipping."""

    enabled: bool = False  # turn KL-Cov on (replaces the clipped surrogate)
    ratio: float = 2e-3  # fraction of valid tokens (top covariance) that get the KL term (0.2% for 7B)
    kl_coef: float = 1.0  # beta on |log pi - log pi_old| (ppo_kl_coef)


@dataclass
class SPEARConfig:
    """SPEAR: tool-call curriculum reward, self-imitation replay, P50 recalibration."""

    enabled: bool = False  # turn SPEAR on
    buffer_size: int = 2048  # trajectory_buffer_size
    baseline_buffer_size: int = 10240  # group entries in the P50 baseline buffer
    tolerate_steps: int = 5  # staleness limit in training steps (scripts 5)
    tolerate_cap: int = 10  # the code caps tolerate_steps at 10
    trigger_factor: float = 1.5  # replay when items above b50 > trigger_factor x buffer_size
    recalibration: Literal["p50", "decay"] = "p50"  # A~ = R - b50, or A~ = decay_weight x A^
    decay_weight: float = 0.1  # w of the decay mode (yaml 0.1)
    std_norm: bool = False  # divide A~ by s50 + eps (off in Dr.BoT)
    eps: float = 1e-6  # epsilon of the std normalisation
    sil_coef: float = 1.0  # c_SIL, replay_loss_coef (scripts/README 1)
    sil_ramp_steps: int = 200  # K_SIL of the cosine ramp (yaml value the scripts end up using)
    tool_reward: Literal["none", "constant", "cosine"] = "cosine"  # use_toolcall_reward
    tool_reward_steps: int = 200  # K_tool of the cosine decay
    tool_reward_per_call: float = 0.1  # r^tool = min(cap, per_call x n_tool)
    tool_reward_cap: float = 1.0  # cap of r^tool
    replay_clip_cov: bool = True  # Clip-Cov mask on replay tokens
    replay_clip_cov_ratio: float = 0.02  # replay Clip-Cov ratio (ALFWorld scripts)
    replay_clip_cov_lb: float = 2.0  # replay Clip-Cov lower bound (ALFWorld scripts; README 1)
    replay_clip_cov_ub: float = 60.0  # replay Clip-Cov upper bound (ALFWorld scripts; README 40)


# ---------------------------------------------------------------------------------------
# STEER, SIREN, Clip_B / Clip_V, ArbEPO, CANON. Their math lives in training/methods/ (whose
# modules re-export these classes); the blocks are defined here so that this module stays free
# of torch (env worker processes import it through the rollout).


@dataclass
class STEERConfig:
    """STEER token weights (docs/methods/steer.md)."""

    enabled: bool = False  # turn STEER on
    mode: Literal["exp", "linear"] = "exp"  # w = clip(exp(-k|Omega|), w_min, 1) (paper, run_exp*.sh) or the linear ramp (run_linear*.sh)
    w_min: float = 0.8  # token_weight_min: the weight of the largest |Omega| (all scripts)
    w_max: float = 1.2  # token_weight_max: weight of the smallest |Omega|, linear mode only (linear scripts; exp ignores it)
    floor: float = 0.02  # lower bound on Omega_max in k = -ln(w_min) / max(Omega_max, floor) (hard-coded in the code)
    prob_eps: float = 1e-8  # p clamped to [eps, 1 - eps], q to [eps, 1] before Omega (code clamps)
    stat_scope: Literal["minibatch", "micro"] = "minibatch"  # min/max of |Omega| over the mini-batch or each micro-batch (code)

    def __post_init__(self) -> None:
        if self.mode not in ("exp", "linear"):
            raise ValueError(f"steer.mode must be 'exp' or 'linear', got {self.mode!r}")
        if not 0.0 < self.w_min <= 1.0:
            raise ValueError(f"steer.w_min must be in (0, 1], got {self.w_min}")
        if self.mode == "linear" and not self.w_max >= self.w_min:
            raise ValueError(f"steer.w_max must be >= steer.w_min ({self.w_min}) in linear mode, got {self.w_max}")
        if not self.floor > 0.0:
            raise ValueError(f"steer.floor must be > 0, got {self.floor}")
        if not 0.0 < self.prob_eps < 0.5:
            raise ValueError(f"steer.prob_eps must be in (0, 0.5), got {self.prob_eps}")
        if self.stat_scope not in ("minibatch", "micro"):
            raise ValueError(f"steer.stat_scope must be 'minibatch' or 'micro', got {self.stat_scope!r}")


@dataclass
class SIRENConfig:
    """SIREN's selective anchored entropy penalty (docs/methods/siren.md)."""

    enabled: bool = False  # turn SIREN on
    coef: float = 0.005  # lambda_H, weight of (H^sel - H_anchor)^2 (siren.sh entropy_coeff)
    top_p: float = 0.8  # P: nucleus mass; the token whose cumulative sum reaches P is excluded (entropy_topp)
    top_k: int = 10000  # K: candidates considered for the nucleus (entropy_topk)
    quantile: float = 0.8  # q: positions with H^P > the q-quantile of their row are selected (mask_ratio)
    # unit of the quantile and of s_i: the whole trajectory (default) or each step-sample (code)
    row: Literal["trajectory", "turn"] = "trajectory"
    # one anchor (code) or one per turn index, global fallback (our option, like EPO's per-turn reference)
    anchor: Literal["global", "per_turn"] = "global"

    def __post_init__(self) -> None:
        if not self.coef >= 0.0:
            raise ValueError(f"siren.coef must be >= 0, got {self.coef}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"siren.top_p must be in (0, 1], got {self.top_p}")
        if not self.top_k >= 1:
            raise ValueError(f"siren.top_k must be >= 1, got {self.top_k}")
        if not 0.0 <= self.quantile <= 1.0:
            raise ValueError(f"siren.quantile must be in [0, 1], got {self.quantile}")
        if self.row not in ("trajectory", "turn"):
            raise ValueError(f"siren.row must be 'trajectory' or 'turn', got {self.row!r}")
        if self.anchor not in ("global", "per_turn"):
            raise ValueError(f"siren.anchor must be 'global' or 'per_turn', got {self.anchor!r}")


@dataclass
class ClipBConfig:
    """Clip_B, batch-normalised discriminator clipping (docs/methods/clip_bv.md)."""

    enabled: bool = False  # turn Clip_B on
    mu: float = 2.5  # drop A < 0 tokens with S - mean(S) < -mu std(S) (clipb.yaml)
    min_std: float = 1e-12  # keep every token when std(S) is below this (code)

    def __post_init__(self) -> None:
        if not self.mu >= 0.0:
            raise ValueError(f"clip_b.mu must be >= 0, got {self.mu}")
        if not self.min_std >= 0.0:
            raise ValueError(f"clip_b.min_std must be >= 0, got {self.min_std}")


@dataclass
class ClipVConfig:
    """Clip_V, vocabulary-normalised discriminator clipping (docs/methods/clip_bv.md)."""

    enabled: bool = False  # turn Clip_V on
    mu: float = 8.5  # candidates: A < 0 and D > mu std(D) (clipv.yaml / default_args; not mean-centred, as the code)
    max_frac: float = 1e-4  # cap: at most max(floor(max_frac n), 1) tokens dropped, the largest D first (code)
    clip_zero_adv: bool = False  # also drop A = 0 tokens, uncapped by their count (Clip_V code parity); default A < 0 only
    min_std: float = 1e-12  # keep every token when std(D) is below this (code)

    def __post_init__(self) -> None:
        if not self.mu >= 0.0:
            raise ValueError(f"clip_v.mu must be >= 0, got {self.mu}")
        if not 0.0 < self.max_frac <= 1.0:
            raise ValueError(f"clip_v.max_frac must be in (0, 1], got {self.max_frac}")
        if not self.min_std >= 0.0:
            raise ValueError(f"clip_v.min_std must be >= 0, got {self.min_std}")


@dataclass
class ArbEPOConfig:
    """ArbEPO (docs/methods/arbepo.md)."""

    enabled: bool = False  # turn ArbEPO on
    target_entropy: float = 0.5  # H*: T_high while H_state <= H*, else T_low (entropy_base; README headline run 0.75)
    temperature_high: float = 1.2  # T_high, heats while entropy is at or below the target (config.py)
    temperature_low: float = 0.8  # T_low, cools while entropy is above the target (config.py)
    task_fraction: float = 0.25  # share of the iteration's tasks played again at T_k (first ones; at least 1) (hard-coded 1/4)
    samples_per_task: int | None = None  # n episodes per regularisation task; null = rollout.group_size
    adv_threshold: float = 0.05  # keep episodes with GRPO advantage > this within their T_k group (hard-coded)
    reg_ratio: float = 60 / 2560  # r_reg: N_reg = max(1, round(r_reg N_main)) trajectories (60 at the paper's 2560)
    reg_max: int | None = None  # fixed N_reg instead of the ratio (code: reinforce_sample_num 60); null = ratio
    halve_above_target: bool = True  # n_reg = floor(min(N_reg, kept) / 2) while above the target (hard-coded)
    # add to the main batch (the paper's form) or replace the first n_reg main trajectories (code)
    mix: Literal["add", "replace"] = "add"
    reg_token_weight: float = 1.0  # multiplies the per-token loss of regularisation tokens (add mode: alpha = this x their token share)
    entropy_state: Literal["full_old", "surprisal_update"] = "full_old"  # H_state: main-batch full entropy of the recompute or update-batch surprisal (code)

    def __post_init__(self) -> None:
        if not self.temperature_high > 0.0 or not self.temperature_low > 0.0:
            raise ValueError("arbepo.temperature_high and arbepo.temperature_low must be > 0, got "
                             f"{self.temperature_high} and {self.temperature_low}")
        if not self.temperature_low <= self.temperature_high:
            raise ValueError(f"arbepo.temperature_low ({self.temperature_low}) must be <= "
                             f"arbepo.temperature_high ({self.temperature_high})")
        if not 0.0 < self.task_fraction <= 1.0:
            raise ValueError(f"arbepo.task_fraction must be in (0, 1], got {self.task_fraction}")
        if self.samples_per_task is not None and self.samples_per_task < 1:
            raise ValueError(f"arbepo.samples_per_task must be >= 1 or null, got {self.samples_per_task}")
        if not self.reg_ratio > 0.0:
            raise ValueError(f"arbepo.reg_ratio must be > 0, got {self.reg_ratio}")
        if self.reg_max is not None and self.reg_max < 1:
            raise ValueError(f"arbepo.reg_max must be >= 1 or null, got {self.reg_max}")
        if self.mix not in ("add", "replace"):
            raise ValueError(f"arbepo.mix must be 'add' or 'replace', got {self.mix!r}")
        if not self.reg_token_weight >= 0.0:
            raise ValueError(f"arbepo.reg_token_weight must be >= 0, got {self.reg_token_weight}")
        if self.entropy_state not in ("full_old", "surprisal_update"):
            raise ValueError(f"arbepo.entropy_state must be 'full_old' or 'surprisal_update', got {self.entropy_state!r}")


@dataclass
class CANONConfig:
    """CANON-entropy (docs/methods/canon.md)."""

    enabled: bool = False  # turn CANON on (replaces the GRPO group baseline / GiGPO's A^E)
    mu: float = 1.0  # inter-group weight (_lambda, "mu in Eq. 5"); 1/2 = Dr.GRPO, 0 = within-half only (setups.sh)
    alpha: float = 1.0  # "alpha in Eq. 8": > 1 favours low-entropy trajectories (setups.sh)
    beta: float = 0.0  # code-only offset added to C+ and subtracted from C- inter terms (function default)
    metric: Literal["turn_mean", "token_mean", "num_turns", "batch_order"] = "turn_mean"  # split metric: turn-averaged entropy, token mean (code), trajectory length, batch order (dr_random)
    schedule: Literal["constant", "anneal", "cosine_restart", "cosine_restart_r"] = "constant"  # mu_k: fixed, batch accuracy (_annel), 1 - cosR(k; 0.6, 0), cosR(k; 1.0, 0.4)
    schedule_total: int = 150  # total steps of the cosine-restart schedule (total_epochs, hard-coded)
    schedule_warmup: int = 30  # linear warm-up steps of the cosine-restart schedule (hard-coded)
    schedule_cycles: int = 3  # cosine cycles after the warm-up (hard-coded)
    restart_intra_max: float = 0.6  # cosine_restart: intra weight w_k = cosR(k; max, min), mu = 1 - w_k
    restart_intra_min: float = 0.0  # cosine_restart: lower end of the intra weight
    restart_r_max: float = 1.0  # cosine_restart_r: mu_k = cosR(k; max, min)
    restart_r_min: float = 0.4  # cosine_restart_r: lower end of mu
    std_norm: bool = False  # divide by the group's reward std + std_eps (canon_std_norm; none in the source)
    std_eps: float = 1e-6  # epsilon of the std normalisation
    length_norm: float = 1.0  # L_norm dividing A: 1 with agentropy's agg modes (the -norm mode already divides by L_max); L_max = the code's seq-mean-token-sum
    recenter_odd_groups: bool = False  # subtract the group mean of A in odd groups, where the formula sums to mu * Delta; off = code

    def __post_init__(self) -> None:
        if self.metric not in ("turn_mean", "token_mean", "num_turns", "batch_order"):
            raise ValueError(f"canon.metric must be turn_mean, token_mean, num_turns or batch_order, got {self.metric!r}")
        if self.schedule not in ("constant", "anneal", "cosine_restart", "cosine_restart_r"):
            raise ValueError(f"canon.schedule must be constant, anneal, cosine_restart or cosine_restart_r, got {self.schedule!r}")
        if not self.schedule_total > self.schedule_warmup >= 1:
            raise ValueError(f"canon.schedule_total ({self.schedule_total}) must exceed canon.schedule_warmup "
                             f"({self.schedule_warmup}) >= 1")
        if not 1 <= self.schedule_cycles <= self.schedule_total - self.schedule_warmup:
            raise ValueError(f"canon.schedule_cycles must be in [1, schedule_total - schedule_warmup], got {self.schedule_cycles}")
        if not self.length_norm > 0.0:
            raise ValueError(f"canon.length_norm must be > 0, got {self.length_norm}")
        if not self.std_eps > 0.0:
            raise ValueError(f"canon.std_eps must be > 0, got {self.std_eps}")


@dataclass
class StrategyConfig:
    """All strategy blocks. GRPO alone (everything disabled) is the baseline."""

    policy_loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    epo: EPOConfig = field(default_factory=EPOConfig)
    empg: EMPGConfig = field(default_factory=EMPGConfig)
    aepo: AEPOConfig = field(default_factory=AEPOConfig)
    spear: SPEARConfig = field(default_factory=SPEARConfig)
    clip_cov: ClipCovConfig = field(default_factory=ClipCovConfig)
    kl_cov: KLCovConfig = field(default_factory=KLCovConfig)
    steer: STEERConfig = field(default_factory=STEERConfig)  # docs/methods/steer.md
    siren: SIRENConfig = field(default_factory=SIRENConfig)  # docs/methods/siren.md
    clip_b: ClipBConfig = field(default_factory=ClipBConfig)  # docs/methods/clip_bv.md
    clip_v: ClipVConfig = field(default_factory=ClipVConfig)  # docs/methods/clip_bv.md
    arbepo: ArbEPOConfig = field(default_factory=ArbEPOConfig)  # docs/methods/arbepo.md
    canon: CANONConfig = field(default_factory=CANONConfig)  # docs/methods/canon.md
    allow_multi_entropy_controllers: bool = False  # allow 2+ of EPO smoothing / SIREN / ArbEPO

    def enabled(self) -> list[str]:
        """Names of the enabled method blocks, in the order they act (docs/methods/README.md):
        ArbEPO's controller and rollout, AEPO's branching, SPEAR's reward, CANON's base advantage,
        EMPG, the EDC keep-mask, then the loss-side methods."""
        names = ("arbepo", "aepo", "spear", "canon", "empg", "clip_b", "clip_v", "clip_cov", "kl_cov",
                 "steer", "epo", "siren")
        return [name for name in names if getattr(self, name).enabled]

    def validate(self) -> list[str]:
        """Check ranges and the conflicts of docs/methods/README.md.

        Raises ``ValueError`` listing every contradictory or out-of-range setting, each by
        its field path (``strategy.epo.kappa_r``); returns warnings for legal settings that
        the composition rules advise against.
        """
        errors: list[str] = []
        warnings: list[str] = []
        pl, adv, epo, empg, aepo, spear, cc, klc = (
            self.policy_loss,
            self.advantage,
            self.epo,
            self.empg,
            self.aepo,
            self.spear,
            self.clip_cov,
            self.kl_cov,
        )

        def need(ok: bool, path: str, message: str) -> None:
            if not ok:
                errors.append(f"strategy.{path}: {message}")

        need(0.0 <= pl.clip_low <= 1.0, "policy_loss.clip_low", f"must be in [0, 1], got {pl.clip_low}")
        need(pl.clip_high >= 0.0, "policy_loss.clip_high", f"must be >= 0, got {pl.clip_high}")
        need(
            pl.dual_clip is None or pl.dual_clip > 1.0,
            "policy_loss.dual_clip",
            f"must be > 1 or null, got {pl.dual_clip}",
        )
        need(
            pl.agg_max_len is None or pl.agg_max_len >= 1,
            "policy_loss.agg_max_len",
            f"must be >= 1 or null, got {pl.agg_max_len}",
        )
        need(pl.kl_coef >= 0.0, "policy_loss.kl_coef", f"must be >= 0, got {pl.kl_coef}")
        need(pl.entropy_coef >= 0.0, "policy_loss.entropy_coef", f"must be >= 0, got {pl.entropy_coef}")
        need(adv.eps > 0.0, "advantage.eps", f"must be > 0, got {adv.eps}")
        need(0.0 <= adv.gamma <= 1.0, "advantage.gamma", f"must be in [0, 1], got {adv.gamma}")
        if adv.estimator == "grpo" and adv.shared_prefix != "none":
            errors.append("strategy.advantage.shared_prefix: only applies to estimator 'gigpo'")

        need(epo.entropy_coef >= 0.0, "epo.entropy_coef", f"must be >= 0, got {epo.entropy_coef}")
        need(epo.alpha >= 0.0, "epo.alpha", f"must be >= 0, got {epo.alpha}")
        need(epo.kappa_l >= 0.0, "epo.kappa_l", f"must be >= 0, got {epo.kappa_l}")
        need(
            epo.kappa_r > epo.kappa_l,
            "epo.kappa_r",
            f"must be > epo.kappa_l ({epo.kappa_l}), got {epo.kappa_r}",
        )
        need(
            epo.schedule_steps is None or epo.schedule_steps >= 1,
            "epo.schedule_steps",
            f"must be >= 1 or null, got {epo.schedule_steps}",
        )
        need(
            epo.smooth_start_step >= 0, "epo.smooth_start_step", f"must be >= 0, got {epo.smooth_start_step}"
        )

        need(empg.k > 0.0, "empg.k", f"must be > 0, got {empg.k}")
        need(empg.k_prime > 0.0, "empg.k_prime", f"must be > 0, got {empg.k_prime}")
        need(empg.zeta >= 0.0, "empg.zeta", f"must be >= 0, got {empg.zeta}")
        need(empg.eps > 0.0, "empg.eps", f"must be > 0, got {empg.eps}")

        need(aepo.adv_weight >= 0.0, "aepo.adv_weight", f"must be >= 0, got {aepo.adv_weight}")
        need(aepo.beam_size >= 1, "aepo.beam_size", f"must be >= 1, got {aepo.beam_size}")
        need(
            0.0 <= aepo.branch_threshold <= 1.0,
            "aepo.branch_threshold",
            f"must be in [0, 1], got {aepo.branch_threshold}",
        )
        need(
            aepo.consecutive_penalty >= 0.0,
            "aepo.consecutive_penalty",
            f"must be >= 0, got {aepo.consecutive_penalty}",
        )
        need(
            aepo.entropy_window_tokens >= 1,
            "aepo.entropy_window_tokens",
            f"must be >= 1, got {aepo.entropy_window_tokens}",
        )
        need(aepo.entropy_topk >= 1, "aepo.entropy_topk", f"must be >= 1, got {aepo.entropy_topk}")
        need(
            aepo.rollout_budget is None or aepo.rollout_budget >= 1,
            "aepo.rollout_budget",
            f"must be >= 1 or null, got {aepo.rollout_budget}",
        )
        if aepo.initial_rollouts is not None:
            need(
                aepo.initial_rollouts >= 1,
                "aepo.initial_rollouts",
                f"must be >= 1 or null, got {aepo.initial_rollouts}",
            )
            if aepo.rollout_budget is not None:
                need(
                    aepo.initial_rollouts <= aepo.rollout_budget,
                    "aepo.initial_rollouts",
                    f"must be <= aepo.rollout_budget ({aepo.rollout_budget}), got {aepo.initial_rollouts}",
                )

        for name, block in (("clip_cov", cc), ("kl_cov", klc)):
            need(0.0 < block.ratio <= 1.0, f"{name}.ratio", f"must be in (0, 1], got {block.ratio}")
        need(
            cc.cov_lb < cc.cov_ub,
            "clip_cov.cov_ub",
            f"must be > clip_cov.cov_lb ({cc.cov_lb}), got {cc.cov_ub}",
        )
        need(klc.kl_coef >= 0.0, "kl_cov.kl_coef", f"must be >= 0, got {klc.kl_coef}")
        if cc.enabled and klc.enabled:
            errors.append(
                "strategy.clip_cov.enabled and strategy.kl_cov.enabled: both replace the on-policy loss; enable one"
            )
        for name in ("steer", "clip_b", "clip_v"):
            if klc.enabled and getattr(self, name).enabled:
                errors.append(
                    f"strategy.kl_cov.enabled with strategy.{name}.enabled: KL-Cov's loss takes no token "
                    "weights or keep-mask; use the clipped surrogate (kl_cov off)"
                )
        if klc.enabled and aepo.enabled and aepo.sg_clip:
            errors.append(
                "strategy.kl_cov.enabled with strategy.aepo.sg_clip: KL-Cov has no clipping to put a stop-gradient in"
            )

        need(spear.buffer_size >= 1, "spear.buffer_size", f"must be >= 1, got {spear.buffer_size}")
        need(
            spear.baseline_buffer_size >= 1,
            "spear.baseline_buffer_size",
            f"must be >= 1, got {spear.baseline_buffer_size}",
        )
        need(spear.tolerate_steps >= 0, "spear.tolerate_steps", f"must be >= 0, got {spear.tolerate_steps}")
        need(spear.trigger_factor > 0.0, "spear.trigger_factor", f"must be > 0, got {spear.trigger_factor}")
        need(
            spear.recalibration != "decay" or 0.0 < spear.decay_weight <= 1.0,
            "spear.decay_weight",
            f"must be in (0, 1] with recalibration 'decay', got {spear.decay_weight}",
        )
        need(spear.sil_coef >= 0.0, "spear.sil_coef", f"must be >= 0, got {spear.sil_coef}")
        need(
            spear.tool_reward_per_call >= 0.0,
            "spear.tool_reward_per_call",
            f"must be >= 0, got {spear.tool_reward_per_call}",
        )
        need(
            spear.replay_clip_cov_lb < spear.replay_clip_cov_ub,
            "spear.replay_clip_cov_ub",
            f"must be > spear.replay_clip_cov_lb ({spear.replay_clip_cov_lb}), got {spear.replay_clip_cov_ub}",
        )
        need(
            0.0 < spear.replay_clip_cov_ratio <= 1.0,
            "spear.replay_clip_cov_ratio",
            f"must be in (0, 1], got {spear.replay_clip_cov_ratio}",
        )
        if errors:
            raise ValueError("invalid strategy config:\n  " + "\n  ".join(errors))
        warnings += validate_controllers(self)

        if spear.enabled and spear.tolerate_steps > spear.tolerate_cap:
            warnings.append(
                f"strategy.spear.tolerate_steps={spear.tolerate_steps} is capped at tolerate_cap={spear.tolerate_cap}"
            )
        if epo.enabled and epo.alpha * 2.0 >= 1.0:
            warnings.append(
                f"strategy.epo.alpha={epo.alpha}: EPO's analysis assumes alpha * beta_max < 1, i.e. alpha < 0.5"
            )
        if empg.enabled and aepo.enabled and aepo.entropy_advantage:
            if aepo.z_scope != "step":
                warnings.append(
                    "strategy.aepo.z_scope='batch' with EMPG on: EMPG acts across steps, so AEPO should z-score within each step"
                )
            if aepo.adv_weight > 0.2:
                warnings.append(
                    f"strategy.aepo.adv_weight={aepo.adv_weight} with EMPG on: keep a <= 0.2"
                )
            if empg.k != 1.0:
                warnings.append(f"strategy.empg.k={empg.k} with AEPO on: keep k = 1")
        if epo.enabled and spear.enabled and epo.kappa_l > 0.0:
            warnings.append(
                f"strategy.epo.kappa_l={epo.kappa_l} with SPEAR: an entropy floor fights SIL's intended entropy fall"
            )
        if aepo.enabled and aepo.sg_clip and cc.enabled and not aepo.sg_clip_high_entropy_only:
            warnings.append(
                "strategy.aepo.sg_clip on every token with Clip-Cov: limit it to high-entropy tokens"
            )
        if cc.enabled and (pl.clip_low < 1.0 or pl.clip_high < 1.0) and not spear.enabled:
            warnings.append(
                "strategy.clip_cov: the official Clip-Cov runs widen policy_loss.clip_low/clip_high to 1.0"
            )
        return warnings
