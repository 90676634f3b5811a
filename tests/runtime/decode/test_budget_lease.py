"""A decode session metered by a budget lease waits for room outside the model lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from coreason_runtime import BudgetExceededError
from coreason_runtime.budget import BudgetCage, Reservation
from coreason_runtime.decode import DecodeEngine, DecodeSession, SessionState

PROMPT = "Hello"


def _until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class Scene:
    """A session whose 4th token needs the room a second lease (``holder``) holds."""

    def __init__(self, engine: DecodeEngine) -> None:
        self.cage = BudgetCage(lease_tokens=2, lease_wait=60)
        prompt_len = engine.session(PROMPT, max_new_tokens=4).prompt_len
        self.cage.set("wf", ceiling=prompt_len + 3 * 3 + 3 * 2)  # the prompt, 3 tokens, holder
        self.holder = self.cage.open("wf", tokens_in=0, max_out=2, tier="other")  # C=6
        self.lease: Reservation = self.cage.open("wf", prompt_len, 4, "local")
        self.session: DecodeSession = engine.session(
            PROMPT, max_new_tokens=4, min_new_tokens=4, meter=self.lease, workflow_id="wf"
        )
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        try:
            self.session.run()
        except BaseException as e:  # reported by the tests' assertions
            self.errors.append(e)

    def start_and_wait_for_the_wait(self) -> None:
        self.thread.start()
        # waiting, the session's lease gave back what it did not use: only the holder's is left
        _until(
            lambda: (
                self.cage.backend.releasable("wf") == self.holder.granted
                and self.session.n_generated == 3
            ),
            "the session to wait for budget",
        )

    def join(self) -> None:
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


@pytest.fixture
def scene(engine: DecodeEngine) -> Iterator[Scene]:
    s = Scene(engine)
    yield s
    s.holder.settle()
    if s.thread.is_alive():
        s.session.cancel("test over")
        s.join()


def test_a_session_waiting_for_budget_leaves_the_model_to_others(
    scene: Scene, engine: DecodeEngine
) -> None:
    scene.start_and_wait_for_the_wait()
    assert engine.lock.acquire(timeout=10)  # the waiting session does not hold the model
    engine.lock.release()
    other = engine.session("Other", max_new_tokens=3)
    other.run()
    assert other.n_generated == 3
    scene.holder.settle()  # the room comes back: the session takes its 4th token
    scene.join()
    assert scene.errors == []
    assert scene.session.finish_reason == "length"
    assert scene.session.n_generated == 4
    assert scene.lease.consumed == scene.lease.tokens_in + 3 * 4


def test_a_pause_ends_a_budget_wait_and_the_session_resumes_later(scene: Scene) -> None:
    scene.start_and_wait_for_the_wait()
    scene.session.pause(wait=True, timeout=10)
    assert scene.session.state is SessionState.PAUSED
    scene.join()  # run() returns, the session parked
    scene.holder.settle()
    scene.session.resume()
    scene.session.run()
    assert scene.errors == []
    assert scene.session.n_generated == 4


def test_a_cancel_ends_a_budget_wait(scene: Scene) -> None:
    scene.start_and_wait_for_the_wait()
    scene.session.cancel("aborted")
    scene.join()
    assert scene.session.finish_reason == "aborted"
    assert scene.session.n_generated == 3


def test_a_session_is_cut_off_when_no_room_can_come(engine: DecodeEngine) -> None:
    cage = BudgetCage(lease_tokens=2, lease_wait=3600)
    prompt_len = engine.session(PROMPT, max_new_tokens=4).prompt_len
    cage.set("wf", ceiling=prompt_len + 3 * 3)
    lease = cage.open("wf", prompt_len, 8, "local")
    session = engine.session(PROMPT, max_new_tokens=8, min_new_tokens=8, meter=lease)
    with pytest.raises(BudgetExceededError):
        session.run()
    assert session.n_generated == 3
    assert session.state is SessionState.FINISHED
    lease.settle()
    assert cage.spent("wf") == prompt_len + 9
