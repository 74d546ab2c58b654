"""Composition checks for the entropy methods of docs/methods/README.md.

Closed-loop entropy controllers each drive entropy to their own set-point with their own
estimator; two or more at once produce limit cycles (ArbEPO is bang-bang). At most one of
EPO's smoothing corridor, SIREN and ArbEPO is allowed unless the config says
``allow_multi_entropy_controllers: true``. Token-level collapse guards (Clip-Cov, Clip_B /
Clip_V, STEER) stack on the same tokens and are advised one at a time.

:func:`validate_controllers` reads a ``StrategyConfig``-like object by attribute; blocks that
are missing count as disabled, so it works on any subset of the strategy blocks.
"""

from __future__ import annotations

from typing import Any


def active_controllers(strategy: Any) -> list[str]:
    """Field paths of the enabled closed-loop entropy controllers.

    EPO counts when its corridor hinge is active (``epo.enabled`` and ``epo.alpha > 0``): its plain
    bonus ``L^H`` has no set-point. SIREN and ArbEPO count when enabled.
    """
    out = []
    epo = getattr(strategy, "epo", None)
    if _enabled(epo) and float(getattr(epo, "alpha", 0.0)) > 0.0:
        out.append("strategy.epo.enabled (corridor smoothing, strategy.epo.alpha > 0)")
    if _enabled(getattr(strategy, "siren", None)):
        out.append("strategy.siren.enabled")
    if _enabled(getattr(strategy, "arbepo", None)):
        out.append("strategy.arbepo.enabled")
    return out


def validate_controllers(strategy: Any, allow_multiple: bool | None = None) -> list[str]:
    """Refuse more than one closed-loop entropy controller; return composition warnings.

    Raises ``ValueError`` naming the enabled fields when two or more of EPO smoothing, SIREN
    and ArbEPO are on, unless ``allow_multiple`` (default: the strategy's
    ``allow_multi_entropy_controllers`` field, False if absent) is true. Also raises
    when both Clip_B and Clip_V are enabled (two variants of one mask). Warnings (returned):
    SIREN with EPO's bonus ``L^H`` (drop it, keep the hinge), more than one token-level
    guard among Clip-Cov / Clip_B / Clip_V / STEER, STEER with the AEPO token factor (log ``steer/w_mean`` on ``z > 0`` and ``z <= 0`` tokens).
    """
    if allow_multiple is None:
        allow_multiple = bool(getattr(strategy, "allow_multi_entropy_controllers", False))
    errors: list[str] = []
    warnings: list[str] = []
    controllers = active_controllers(strategy)
    if len(controllers) > 1 and not allow_multiple:
        errors.append(
            "more than one closed-loop entropy controller is enabled: " + ", ".join(controllers)
            + ". Enable one, or set strategy.allow_multi_entropy_controllers: true (docs/methods/README.md)"
        )
    if _enabled(getattr(strategy, "clip_b", None)) and _enabled(getattr(strategy, "clip_v", None)):
        errors.append("strategy.clip_b.enabled and strategy.clip_v.enabled: two variants of the same keep-mask; enable one")
    if errors:
        raise ValueError("invalid strategy config:\n  " + "\n  ".join(errors))

    epo = getattr(strategy, "epo", None)
    if _enabled(getattr(strategy, "siren", None)) and _enabled(epo) and bool(getattr(epo, "entropy_bonus", True)):
        warnings.append("strategy.siren with strategy.epo.entropy_bonus: EPO's L^H raises entropy everywhere, the "
                        "'global explosion' SIREN avoids; set strategy.epo.entropy_bonus: false (composition rule 'SIREN with EPO', docs/methods/README.md)")
    guards = [f"strategy.{name}" for name in ("clip_cov", "clip_b", "clip_v", "steer")
              if _enabled(getattr(strategy, name, None))]
    if len(guards) > 1:
        warnings.append(f"{' and '.join(guards)}: several token-level collapse guards hit the same tokens and "
                        "shrink the step; add one at a time (composition rule 'one token-level guard', docs/methods/README.md)")
    aepo = getattr(strategy, "aepo", None)
    if _enabled(getattr(strategy, "steer", None)) and _enabled(aepo) and bool(getattr(aepo, "entropy_advantage", False)):
        warnings.append("strategy.steer with strategy.aepo.entropy_advantage: STEER damps the tokens AEPO's factor "
                        "amplifies; compare steer/w_mean on z > 0 and z <= 0 tokens (composition rule 'one token-level guard', docs/methods/README.md)")
    return warnings


def _enabled(block: Any) -> bool:
    return block is not None and bool(getattr(block, "enabled", False))
