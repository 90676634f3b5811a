"""ETA and p_succ per kind of subgoal, learned from what ran (kept under $COREASON_HOME)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EstimateBook", "KindEstimate"]


@dataclass
class KindEstimate:
    """What the runs of one kind say: seconds per attempt (moving average) and attempts that
    succeeded out of attempts made."""

    eta: float
    successes: float
    attempts: float
    runs: int = 0
    source: str = "history"

    @property
    def p_succ(self) -> float:
        # one pseudo-success and one pseudo-failure: never exactly 0 or 1 from few runs
        return (self.successes + 1.0) / (self.attempts + 2.0)


class EstimateBook:
    """Per kind: ETA and p_succ from history (probe results count as a first observation).

    ``path`` (JSON) keeps it across restarts; ``rate`` is the moving average's weight.
    """

    def __init__(self, path: Path | None = None, *, rate: float = 0.3) -> None:
        self.path = path
        self.rate = rate
        self._kinds: dict[str, KindEstimate] = {}
        self._lock = threading.Lock()
        if path is not None and path.is_file():
            data = json.loads(path.read_text())
            self._kinds = {k: KindEstimate(**v) for k, v in data.items()}

    def get(self, kind: str) -> KindEstimate | None:
        with self._lock:
            return self._kinds.get(kind)

    def seen(self, kind: str) -> bool:
        return self.get(kind) is not None

    def seed(self, kind: str, eta: float | None, p_succ: float | None, source: str) -> None:
        """A probe's estimate, taken as the kind's first observation (if none is known)."""
        with self._lock:
            if kind in self._kinds:
                return
            p = 0.5 if p_succ is None else p_succ
            self._kinds[kind] = KindEstimate(
                eta=1.0 if eta is None else eta, successes=p, attempts=1.0, source=source
            )
        self._save()

    def observe(self, kind: str, run_s: float, attempts: int, succeeded: bool) -> None:
        """One subgoal's run: ``attempts`` made over ``run_s`` seconds, ending in success or not."""
        if attempts < 1:
            return
        per = run_s / attempts
        with self._lock:
            est = self._kinds.get(kind)
            if est is None or est.source != "history":
                prior = est
                est = self._kinds[kind] = KindEstimate(eta=per, successes=0.0, attempts=0.0)
                if prior is not None:  # keep the probe's evidence, at one observation's weight
                    est.successes, est.attempts = prior.successes, prior.attempts
            else:
                est.eta += self.rate * (per - est.eta)
            est.successes += 1.0 if succeeded else 0.0
            est.attempts += attempts
            est.runs += 1
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        with self._lock:
            data = {k: vars(v) for k, v in self._kinds.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.path)
