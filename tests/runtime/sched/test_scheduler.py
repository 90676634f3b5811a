"""The live scheduler: real worker processes started, paused, resumed, reniced and stopped."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
import types
from pathlib import Path
from typing import ClassVar

import psutil
import pytest
from coreason_runtime import Coordinator, EventBus, EventType
from coreason_runtime._exceptions import (
    InvalidEstimateError,
    TaskBudgetExceededError,
    TaskFailedError,
    UnknownDependencyError,
    WorkerDiedError,
)
from coreason_runtime.events import EstimateUpdated
from coreason_runtime.sched import (
    CallableJob,
    CgroupFreezer,
    CompileProbe,
    InProcessJob,
    PauseGate,
    PilotProbe,
    ProcessJob,
    Scheduler,
    SubgoalDAG,
    TaskSpec,
)


def _sleepy(seconds: float, marker: str | None = None) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)
    if marker:
        Path(marker).write_text(str(time.time()))


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _fail() -> bool:
    return False


def _flaky(marker: str) -> bool:
    path = Path(marker)
    if not path.exists():
        path.write_text("1")
        return False
    return True


def _run(sched: Scheduler, dag: SubgoalDAG, actions: dict, **kw: object):  # type: ignore[no-untyped-def]
    return asyncio.run(sched.run(dag, actions, **kw))  # type: ignore[arg-type]


def test_dependencies_finish_before_their_dependants(tmp_path: Path, bus: EventBus) -> None:
    dag = SubgoalDAG(tasks=[TaskSpec(id="a", eta=0.1), TaskSpec(id="b", eta=0.1, deps=["a"])])
    marks = {k: str(tmp_path / k) for k in "ab"}
    actions = {k: (lambda s, n, k=k: CallableJob(_sleepy, 0.1, marks[k])) for k in "ab"}
    result = _run(Scheduler(bus, cores=2, tick_s=0.05), dag, actions)
    assert result.status == "succeeded"
    assert float(Path(marks["a"]).read_text()) < float(Path(marks["b"]).read_text())


def test_outranked_job_is_physically_stopped_then_resumed(bus: EventBus) -> None:
    dag = SubgoalDAG(tasks=[TaskSpec(id="a", eta=1.0), TaskSpec(id="b", eta=0.5)])
    pids: dict[str, int] = {}
    states: list[str] = []

    def on_event(e):  # type: ignore[no-untyped-def]
        if e.type == EventType.TASK_STARTED:
            pids[e.data.task] = e.data.pid
        if e.type == EventType.TASK_PREEMPTED:
            proc = psutil.Process(pids[e.data.task])
            deadline = time.monotonic() + 2.0
            while proc.status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
                time.sleep(0.001)
            states.append(proc.status())

    bus.subscribe(on_event)
    sched = Scheduler(bus, cores=1, tick_s=0.05)
    actions = {
        "a": lambda s, n: CallableJob(_sleepy, 0.6),
        "b": lambda s, n: CallableJob(_sleepy, 0.2),
    }

    async def main():  # type: ignore[no-untyped-def]
        run = asyncio.create_task(sched.run(dag, actions))
        await asyncio.sleep(0.25)
        sched.update_estimate("dag", "b", eta=10.0)
        return await run

    result = asyncio.run(main())
    assert states == [psutil.STATUS_STOPPED]
    assert result.tasks["a"].preemptions == 1
    assert [e.data.task for e in bus.history([EventType.TASK_RESUMED])] == ["a"]


def test_off_path_job_is_reniced_while_on_path_job_keeps_priority(bus: EventBus) -> None:
    dag = SubgoalDAG(tasks=[TaskSpec(id="long", eta=5.0), TaskSpec(id="short", eta=0.5)])
    nice: dict[str, int] = {}
    jobs: dict[str, CallableJob] = {}

    def start(name: str):  # type: ignore[no-untyped-def]
        def action(spec, attempt):  # type: ignore[no-untyped-def]
            jobs[name] = CallableJob(_sleepy, 0.5)
            return jobs[name]

        return action

    sched = Scheduler(bus, cores=2, tick_s=0.05)

    async def main():  # type: ignore[no-untyped-def]
        run = asyncio.create_task(sched.run(dag, {"long": start("long"), "short": start("short")}))
        await asyncio.sleep(0.25)
        for name, job in jobs.items():
            nice[name] = psutil.Process(job.pid).nice()
        return await run

    asyncio.run(main())
    assert nice == {"long": 0, "short": 10}


def test_worker_that_dies_raises_worker_died(bus: EventBus) -> None:
    dag = SubgoalDAG(tasks=[TaskSpec(id="a", eta=0.1, max_attempts=1)])
    with pytest.raises(WorkerDiedError) as info:
        _run(Scheduler(bus, tick_s=0.05), dag, {"a": lambda s, n: CallableJob(_die)})
    assert info.value.result.tasks["a"].state == "failed"  # type: ignore[attr-defined]


def test_failed_attempt_is_retried(tmp_path: Path, bus: EventBus) -> None:
    dag = SubgoalDAG(tasks=[TaskSpec(id="a", eta=0.1, p_succ=0.5, max_attempts=2)])
    marker = str(tmp_path / "tried")
    result = _run(Scheduler(bus, tick_s=0.05), dag, {"a": lambda s, n: CallableJob(_flaky, marker)})
    assert result.tasks["a"].attempts == 2
    assert [e.data.will_retry for e in bus.history([EventType.TASK_FAILED])] == [True]


class _RecordingJob(CallableJob):
    """A real worker process that also records the priorities the scheduler gives it."""

    given: ClassVar[list[tuple[int, bool]]] = []

    def set_priority(self, critical: bool, cpus: object) -> None:  # type: ignore[override]
        _RecordingJob.given.append((self.pid, critical))
        super().set_priority(critical, cpus)  # type: ignore[arg-type]


def test_a_retried_attempt_gets_its_priority_set_too(tmp_path: Path, bus: EventBus) -> None:
    _RecordingJob.given = []
    dag = SubgoalDAG(tasks=[TaskSpec(id="a", eta=0.1, p_succ=0.5, max_attempts=2)])
    marker = str(tmp_path / "tried")
    pids: list[int] = []

    def action(spec, attempt):  # type: ignore[no-untyped-def]
        job = _RecordingJob(_flaky, marker)
        pids.append(job.pid)
        return job

    result = _run(Scheduler(bus, cores=1, tick_s=0.05), dag, {"a": action})
    assert result.tasks["a"].attempts == 2
    assert [pid for pid, _ in _RecordingJob.given] == pids


def test_closing_the_scheduler_ends_a_running_dag_as_cancelled(bus: EventBus) -> None:
    dag = SubgoalDAG(tasks=[TaskSpec(id="a", eta=5.0)])
    jobs: list[CallableJob] = []

    def action(spec, attempt):  # type: ignore[no-untyped-def]
        jobs.append(CallableJob(_sleepy, 30))
        return jobs[-1]

    sched = Scheduler(bus, tick_s=0.05)

    async def main():  # type: ignore[no-untyped-def]
        run = asyncio.create_task(sched.run(dag, {"a": action}, check=False))
        while not jobs:
            await asyncio.sleep(0.02)
        sched.close()
        return await asyncio.wait_for(run, 10)

    result = asyncio.run(main())
    assert result.status == "cancelled"
    assert result.tasks["a"].state == "aborted"
    jobs[0].proc.join(timeout=30)  # killed: reaping it can lag on a loaded machine
    assert jobs[0].proc.exitcode is not None


def test_spawn_leaves_a_callers_stderr_file_open_and_alone(tmp_path: Path) -> None:
    with (tmp_path / "err.log").open("wb") as err:
        job = ProcessJob.spawn(["sh", "-c", "echo oops >&2; exit 3"], stderr=err)
        job.proc.wait(timeout=10)
        outcome = job.poll()
        assert not err.closed
    assert outcome is not None and outcome.error == "exit status 3"
    assert (tmp_path / "err.log").read_text() == "oops\n"


def test_task_failing_every_attempt_raises_and_aborts_dependants(bus: EventBus) -> None:
    dag = SubgoalDAG(
        tasks=[TaskSpec(id="a", eta=0.1, max_attempts=2), TaskSpec(id="b", eta=0.1, deps=["a"])]
    )
    actions = {"a": lambda s, n: CallableJob(_fail), "b": lambda s, n: CallableJob(_sleepy, 0)}
    with pytest.raises(TaskFailedError) as info:
        _run(Scheduler(bus, tick_s=0.05), dag, actions)
    assert info.value.result.tasks["b"].state == "aborted"  # type: ignore[attr-defined]


def test_task_over_wall_budget_is_stopped(bus: EventBus) -> None:
    dag = SubgoalDAG(tasks=[TaskSpec(id="a", eta=0.1, budget={"wall_s": 0.2})])
    jobs: list[ProcessJob] = []

    def action(spec, attempt):  # type: ignore[no-untyped-def]
        jobs.append(ProcessJob.spawn(["sleep", "30"]))
        return jobs[-1]

    with pytest.raises(TaskBudgetExceededError):
        _run(Scheduler(bus, tick_s=0.05), dag, {"a": action})
    assert jobs[0].proc.poll() is not None


def test_dag_over_flop_budget_is_stopped(bus: EventBus) -> None:
    dag = SubgoalDAG(budget={"flops": 1e8}, tasks=[TaskSpec(id="a", eta=1.0, flops=1e9)])
    with pytest.raises(TaskBudgetExceededError) as info:
        _run(Scheduler(bus, tick_s=0.05), dag, {"a": lambda s, n: CallableJob(_sleepy, 5)})
    assert info.value.result.status == "over_budget"  # type: ignore[attr-defined]


def test_cancelling_a_branch_kills_it_and_lets_the_rest_finish(bus: EventBus) -> None:
    dag = SubgoalDAG(
        tasks=[
            TaskSpec(id="keep", eta=0.3),
            TaskSpec(id="drop", eta=5.0),
            TaskSpec(id="after_drop", eta=0.1, deps=["drop"]),
        ]
    )
    jobs: dict[str, CallableJob] = {}

    def start(name: str, seconds: float):  # type: ignore[no-untyped-def]
        def action(spec, attempt):  # type: ignore[no-untyped-def]
            jobs[name] = CallableJob(_sleepy, seconds)
            return jobs[name]

        return action

    sched = Scheduler(bus, cores=2, tick_s=0.05)
    actions = {
        "keep": start("keep", 0.4),
        "drop": start("drop", 30),
        "after_drop": start("after_drop", 0),
    }

    async def main():  # type: ignore[no-untyped-def]
        run = asyncio.create_task(sched.run(dag, actions))
        await asyncio.sleep(0.2)
        assert sched.cancel("dag", ["drop"]) == ["drop", "after_drop"]
        return await run

    result = asyncio.run(main())
    assert result.status == "succeeded"
    assert result.tasks["keep"].state == "done"
    assert result.tasks["after_drop"].state == "aborted"
    assert jobs["drop"].proc.exitcode is not None


def test_missing_action_is_an_unknown_dependency(bus: EventBus) -> None:
    dag = SubgoalDAG(tasks=[TaskSpec(id="a")])
    with pytest.raises(UnknownDependencyError):
        _run(Scheduler(bus), dag, {})


def test_schedule_events_show_submission_path_and_decisions(bus: EventBus) -> None:
    dag = SubgoalDAG(tasks=[TaskSpec(id="a", eta=0.1)])
    _run(Scheduler(bus, tick_s=0.05), dag, {"a": lambda s, n: CallableJob(_sleepy, 0.05)})
    kinds = {e.type for e in bus.history()}
    assert {
        EventType.DAG_SUBMITTED,
        EventType.CRITICAL_PATH,
        EventType.SCHEDULE_DECIDED,
        EventType.TASK_STARTED,
        EventType.TASK_FINISHED,
    } <= kinds


class _Session:
    """Implements the Preemptible protocol the decode engine implements: a counting thread."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.go.set()
        self.calls: list[str] = []
        self.steps = 0

    def pause(self) -> None:
        self.calls.append("pause")
        self.go.clear()

    def resume(self) -> None:
        self.calls.append("resume")
        self.go.set()

    def work(self, gate: PauseGate) -> None:
        while self.steps < 40:
            self.go.wait()
            gate.checkpoint()
            self.steps += 1
            time.sleep(0.01)


def test_in_process_job_is_paused_through_its_preemptible_handle(bus: EventBus) -> None:
    dag = SubgoalDAG(
        tasks=[TaskSpec(id="decode", kind="decode", eta=1.0), TaskSpec(id="urgent", eta=0.5)]
    )
    session = _Session()
    actions = {
        "decode": lambda s, n: InProcessJob(session.work, handle=session),
        "urgent": lambda s, n: CallableJob(_sleepy, 0.2),
    }
    sched = Scheduler(bus, cores=1, tick_s=0.05)

    async def main():  # type: ignore[no-untyped-def]
        run = asyncio.create_task(sched.run(dag, actions))
        await asyncio.sleep(0.1)
        sched.update_estimate("dag", "urgent", eta=10.0)
        return await run

    result = asyncio.run(main())
    assert session.calls == ["pause", "resume"]
    assert result.tasks["decode"].state == "done"


def test_update_estimate_rejects_bad_values_and_keeps_old_ones(bus: EventBus) -> None:
    dag = SubgoalDAG(tasks=[TaskSpec(id="a", eta=0.3)])
    sched = Scheduler(bus, tick_s=0.05)
    seen: list[float] = []

    async def main():  # type: ignore[no-untyped-def]
        run = asyncio.create_task(sched.run(dag, {"a": lambda s, n: CallableJob(_sleepy, 0.3)}))
        await asyncio.sleep(0.1)
        with pytest.raises(InvalidEstimateError):
            sched.update_estimate("dag", "a", p_succ=2.0)
        seen.append(dag.task("a").p_succ)
        return await run

    asyncio.run(main())
    assert seen == [1.0]


def test_an_updated_estimate_is_published_with_who_made_it(bus: EventBus) -> None:
    dag = SubgoalDAG(tasks=[TaskSpec(id="a", eta=0.3)])
    sched = Scheduler(bus, tick_s=0.05)

    async def main():  # type: ignore[no-untyped-def]
        run = asyncio.create_task(sched.run(dag, {"a": lambda s, n: CallableJob(_sleepy, 0.3)}))
        await asyncio.sleep(0.1)
        sched.update_estimate("dag", "a", eta=0.5, source="pilot")
        return await run

    asyncio.run(main())
    (event,) = bus.history([EventType.ESTIMATE_UPDATED])
    assert event.data == EstimateUpdated(dag_id="dag", task="a", eta=0.5, p_succ=1.0, by="pilot")


def test_compile_probe_marks_a_syntax_error_as_hopeless() -> None:
    est = CompileProbe("def f(:\n  pass").run(TaskSpec(id="a"))
    assert est.p_succ == 0.0


@pytest.mark.parametrize(("exponent", "eta"), [(1.0, 15.0), (2.0, 150.0), (3.0, 1500.0)])
def test_pilot_probe_extrapolates_the_eta_by_the_size_ratio_to_the_exponent(
    monkeypatch: pytest.MonkeyPatch, exponent: float, eta: float
) -> None:
    from coreason_runtime.sched import _probes

    # a clock the pilot advances, so the extrapolation is checked exactly (the real timing,
    # probe overhead included, is measured in benchmarks/bench_sched_pilot.py)
    now = [100.0]
    monkeypatch.setattr(_probes, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    sizes: list[float] = []

    def pilot(size: float) -> bool:
        sizes.append(size)
        now[0] += 0.75 * size  # the pilot "takes" 1.5 s at size 2
        return True

    est = PilotProbe(pilot, pilot_size=2, full_size=20, exponent=exponent).run(TaskSpec(id="a"))
    assert sizes == [2]
    assert est.eta == pytest.approx(eta, rel=1e-12)
    assert est.detail == "pilot ok"


def test_scheduler_for_runtime_runs_on_the_coordinator_loop(home: Path) -> None:
    with Coordinator() as rt:
        sched = Scheduler.for_runtime(rt, tick_s=0.05)
        seen: list[str] = []
        rt.bus.subscribe(lambda e: seen.append(e.type.value), ["task"])
        result = sched.run_sync(
            SubgoalDAG(tasks=[TaskSpec(id="a", eta=0.1)]),
            {"a": lambda s, n: CallableJob(_sleepy, 0.05)},
        )
    assert result.status == "succeeded"
    assert "task.finished" in seen


@pytest.mark.skipif(not CgroupFreezer.available(), reason="no writable cgroup v2 here")
def test_cgroup_freeze_stops_the_whole_group() -> None:
    job = ProcessJob.spawn(["sh", "-c", "sleep 30 & wait"], freeze=True)
    try:
        time.sleep(0.1)
        job.pause()
        events = (job.freezer.path / "cgroup.events").read_text()  # type: ignore[union-attr]
        assert "frozen 1" in events
        job.resume()
        assert "frozen 0" in (job.freezer.path / "cgroup.events").read_text()  # type: ignore[union-attr]
    finally:
        job.kill()


@pytest.mark.gpu
@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="needs an NVIDIA GPU")
def test_gpu_job_stream_priority_follows_the_critical_path() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    job = InProcessJob(lambda gate: None, gpu=True)
    high = job.gate.stream.priority
    job.set_priority(False, None)
    assert job.gate.stream.priority > high  # larger number = lower priority in CUDA
