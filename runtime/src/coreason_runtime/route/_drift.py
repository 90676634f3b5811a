"""Drift per tier: a Page–Hinkley test on success minus its prediction, and probes to recover."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DriftWatch"]


@dataclass
class _Tier:
    cum: float = 0.0  # Σ (e + δ) since the last alarm
    peak: float = 0.0  # its running maximum
    held_since: int | None = None  # request count at the alarm; None while trusted
    probes_ok: int = 0
    alarms: int = 0
    reason: str = ""


class DriftWatch:
    """Notices a tier that starts failing, within a bounded number of its requests.

    For each tier, ``e = s − p̂`` (success minus the prediction made before learning from it)
    feeds a one-sided Page–Hinkley test: ``m = Σ(e + δ)``, alarm when ``max m − m > h``.
    While a tier behaves as predicted the sum drifts up by ``δ`` a request; when a tier
    predicted at ``p̂`` fails every time it falls by ``p̂ − δ`` a request, so the alarm comes
    after at most ``⌈h / (p̂ − δ)⌉`` failures (5 at ``p̂ = 0.9``). A held tier is left out of
    plans, except that every ``probe_every``-th plan tries it first; ``recover`` successful
    probes in a row trust it again.
    """

    def __init__(
        self,
        *,
        delta: float = 0.2,
        threshold: float = 3.0,
        probe_every: int = 10,
        recover: int = 2,
    ) -> None:
        self.delta, self.threshold = delta, threshold
        self.probe_every, self.recover = probe_every, recover
        self._tiers: dict[str, _Tier] = {}
        self._plans = 0

    def _get(self, tier: str) -> _Tier:
        return self._tiers.setdefault(tier, _Tier())

    def observe(self, tier: str, success: bool, predicted: float) -> bool:
        """Learn one outcome of ``tier``; ``True`` when this outcome raised an alarm."""
        st = self._get(tier)
        if st.held_since is not None:
            st.probes_ok = st.probes_ok + 1 if success else 0
            if st.probes_ok >= self.recover:
                st.held_since, st.cum, st.peak, st.reason = None, 0.0, 0.0, ""
            return False
        st.cum += (float(success) - predicted) + self.delta
        st.peak = max(st.peak, st.cum)
        if st.peak - st.cum <= self.threshold:
            return False
        st.alarms += 1
        st.held_since, st.probes_ok = self._plans, 0
        st.reason = (
            f"degraded: failing where p≈{predicted:.2f} was predicted "
            f"(Page–Hinkley drop {st.peak - st.cum:.2f} > {self.threshold:g})"
        )
        st.cum = st.peak = 0.0
        return True

    def held(self, candidates: Sequence[str]) -> dict[str, str]:
        """The candidates currently distrusted, with why."""
        return {
            t: self._tiers[t].reason
            for t in candidates
            if t in self._tiers and self._tiers[t].held_since is not None
        }

    def probe(self, candidates: Sequence[str]) -> str | None:
        """Count a plan; the held tier to probe first in it, if this plan is a probe."""
        self._plans += 1
        for t in candidates:
            st = self._tiers.get(t)
            held = st.held_since if st is not None else None
            if held is not None and (self._plans - held) % self.probe_every == 0:
                return t
        return None

    def reasons(self) -> dict[str, str]:
        return {t: st.reason for t, st in self._tiers.items() if st.held_since is not None}

    def alarms(self, tier: str) -> int:
        return self._get(tier).alarms
