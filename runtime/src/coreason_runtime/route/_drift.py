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
    next_probe: int = 0  # the plan count from which a probe is due
    interval: int = 0  # plans between probes (doubles after each failed probe)
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
    plans, except for probes: the first is due ``probe_every`` plans after the alarm, and each
    failed probe doubles the wait for the next (up to ``max_interval``), so a tier that stays
    broken costs ``O(log n)`` probes over ``n`` requests rather than one every ``probe_every``;
    ``recover`` successful probes in a row trust it again. A due probe waits for a request the
    tier would be tried first on were it trusted (:meth:`due`, then :meth:`probed`), for one
    more interval at most (:meth:`overdue`).
    """

    def __init__(
        self,
        *,
        delta: float = 0.2,
        threshold: float = 3.0,
        probe_every: int = 10,
        recover: int = 2,
        max_interval: int = 160,
    ) -> None:
        self.delta, self.threshold = delta, threshold
        self.probe_every, self.recover = probe_every, recover
        self.max_interval = max(max_interval, probe_every)
        self._tiers: dict[str, _Tier] = {}
        self._plans = 0

    def _get(self, tier: str) -> _Tier:
        return self._tiers.setdefault(tier, _Tier())

    def observe(self, tier: str, success: bool, predicted: float) -> bool:
        """Learn one outcome of ``tier``; ``True`` when this outcome raised an alarm."""
        st = self._get(tier)
        if st.held_since is not None:
            st.probes_ok = st.probes_ok + 1 if success else 0
            if not success:
                st.interval = min(2 * st.interval, self.max_interval)
                st.next_probe = self._plans + st.interval
            if st.probes_ok >= self.recover:
                st.held_since, st.cum, st.peak, st.reason = None, 0.0, 0.0, ""
            return False
        st.cum += (float(success) - predicted) + self.delta
        st.peak = max(st.peak, st.cum)
        if st.peak - st.cum <= self.threshold:
            return False
        st.alarms += 1
        st.held_since, st.probes_ok = self._plans, 0
        st.interval, st.next_probe = self.probe_every, self._plans + self.probe_every
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

    def tick(self) -> None:
        """Count one plan (probes fall due in plans)."""
        self._plans += 1

    def due(self, candidates: Sequence[str]) -> str | None:
        """The first held candidate whose probe is due (it stays due until :meth:`probed`)."""
        for t in candidates:
            st = self._tiers.get(t)
            if st is not None and st.held_since is not None and self._plans >= st.next_probe:
                return t
        return None

    def overdue(self, tier: str) -> bool:
        """Whether ``tier``'s probe has waited a whole interval past its due plan."""
        st = self._get(tier)
        return st.held_since is not None and self._plans >= st.next_probe + max(st.interval, 1)

    def probed(self, tier: str) -> None:
        """``tier`` is probed in this plan: the next probe is due one interval later."""
        st = self._get(tier)
        st.next_probe = self._plans + max(st.interval, 1)

    def probe(self, candidates: Sequence[str]) -> str | None:
        """Count a plan; the held tier to probe in it, if one is due (and mark it probed)."""
        self.tick()
        tier = self.due(candidates)
        if tier is not None:
            self.probed(tier)
        return tier

    def reasons(self) -> dict[str, str]:
        return {t: st.reason for t, st in self._tiers.items() if st.held_since is not None}

    def alarms(self, tier: str) -> int:
        return self._get(tier).alarms
