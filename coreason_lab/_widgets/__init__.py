"""Live dashboard views: state folded from events, rendered into ipywidgets and plotly."""

from __future__ import annotations

from coreason_lab._widgets._dashboard import VIEWS, Dashboard
from coreason_lab._widgets._state import (
    BudgetState,
    CacheState,
    DagState,
    DecodeState,
    WorkerState,
    WorkflowState,
)
from coreason_lab._widgets._views import BudgetView, CacheView, DagView, DecodeView

__all__ = [
    "VIEWS",
    "BudgetState",
    "BudgetView",
    "CacheState",
    "CacheView",
    "DagState",
    "DagView",
    "Dashboard",
    "DecodeState",
    "DecodeView",
    "WorkerState",
    "WorkflowState",
]
