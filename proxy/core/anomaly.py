"""Anomaly escalation (SPEC §8): a session that keeps getting denied, or does little but
write, has its next actions judged one tier more strictly."""

from __future__ import annotations

from proxy.core.action import Activity, Effect
from proxy.core.policy import AnomalySettings


def escalation(activity: Activity, settings: AnomalySettings) -> str | None:
    """Why this session's next action is raised one tier, or None.

    ``activity`` counts the calls before this one, so the check starts with the call after
    the ``min_calls``-th.
    """
    calls = activity.calls
    if calls < settings.min_calls:
        return None
    denial_rate = activity.denials / calls
    if denial_rate >= settings.denial_rate:
        return f"denial rate {denial_rate:.0%} over {calls} calls (threshold {settings.denial_rate:.0%})"
    write_ratio = activity.writes / calls
    if write_ratio >= settings.write_ratio:
        return f"write ratio {write_ratio:.0%} over {calls} calls (threshold {settings.write_ratio:.0%})"
    return None


def raise_effect(effect: Effect, activity: Activity, settings: AnomalySettings) -> tuple[Effect, str | None]:
    """The effect to decide with, and why it was raised (None: unchanged; admin cannot rise)."""
    why = escalation(activity, settings)
    if why is None or effect is Effect.ADMIN:
        return effect, None
    return effect.raised(), why
