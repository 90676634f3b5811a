"""Scheduling: subgoal DAGs, critical-path (CPCS) and constraint-slack (CSS) schedulers."""

from __future__ import annotations

from coreason_runtime.sched._critical import (
    POLICIES,
    CriticalPathPolicy,
    DaskOrderPolicy,
    FifoPolicy,
    HeftPolicy,
    Policy,
    TaskView,
    allocate,
    critical_path,
    upward_ranks,
)
from coreason_runtime.sched._dag import Budget, Resources, SubgoalDAG, TaskKind, TaskSpec
from coreason_runtime.sched._jobs import (
    CallableJob,
    CgroupFreezer,
    InProcessJob,
    Job,
    JobOutcome,
    PauseGate,
    Preemptible,
    ProcessJob,
    cuda_stream,
)
from coreason_runtime.sched._probes import CompileProbe, Estimate, HintProbe, PilotProbe, Probe
from coreason_runtime.sched._scheduler import Scheduler
from coreason_runtime.sched._slack import (
    Constraint,
    DeadlineConstraint,
    SideCondition,
    SlackAction,
    SlackScheduler,
    TypeConstraint,
    UnitConstraint,
)
from coreason_runtime.sched._state import Action, DAGResult, TaskRecord

__all__ = [
    "POLICIES",
    "Action",
    "Budget",
    "CallableJob",
    "CgroupFreezer",
    "CompileProbe",
    "Constraint",
    "CriticalPathPolicy",
    "DAGResult",
    "DaskOrderPolicy",
    "DeadlineConstraint",
    "Estimate",
    "FifoPolicy",
    "HeftPolicy",
    "HintProbe",
    "InProcessJob",
    "Job",
    "JobOutcome",
    "PauseGate",
    "PilotProbe",
    "Policy",
    "Preemptible",
    "Probe",
    "ProcessJob",
    "Resources",
    "Scheduler",
    "SideCondition",
    "SlackAction",
    "SlackScheduler",
    "SubgoalDAG",
    "TaskKind",
    "TaskRecord",
    "TaskSpec",
    "TaskView",
    "TypeConstraint",
    "UnitConstraint",
    "allocate",
    "critical_path",
    "cuda_stream",
    "upward_ranks",
]
