"""The SQLite store: content addressing, first writer wins, eviction by reuse half-life."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from coreason_runtime._exceptions import ExpressionTooLargeError
from coreason_runtime.cache import Entry, SQLiteStore


def _entry(key: str, result: str = "r", workflow: str = "w1") -> Entry:
    return Entry(
        key=key,
        kind="expr",
        artifact={"result": result, "steps": []},
        verifier="v",
        verifier_hash="h",
        provenance={"workflow_id": workflow},
        text=f"text-{key}",
        workflows=[workflow],
    )


@pytest.fixture
def store(home: Path) -> SQLiteStore:
    s = SQLiteStore(home / "cache.sqlite", half_life=100.0)
    yield s
    s.close()


def test_put_then_get_round_trips_the_artifact(store: SQLiteStore) -> None:
    store.put(_entry("k"))
    got = store.get("k")
    assert got is not None and got.artifact == {"result": "r", "steps": []}


def test_second_writer_of_a_key_keeps_the_first_artifact(store: SQLiteStore) -> None:
    store.put(_entry("k", "first", "w1"))
    stored = store.put(_entry("k", "second", "w2"))
    assert stored.artifact["result"] == "first"
    assert stored.workflows == ["w1", "w2"]


def test_concurrent_writers_to_one_key_leave_one_consistent_entry(home: Path) -> None:
    path = home / "shared.sqlite"
    SQLiteStore(path).close()
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        s = SQLiteStore(path)
        try:
            for _ in range(10):
                s.put(_entry("same", f"r{i}", f"w{i}"))
                s.touch("same", f"w{i}")
        except BaseException as e:  # collected and asserted below
            errors.append(e)
        finally:
            s.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    s = SQLiteStore(path)
    entry = s.get("same")
    s.close()
    assert entry is not None
    assert sorted(entry.workflows) == [f"w{i}" for i in range(6)]
    assert entry.hits == 60
    assert entry.artifact["result"] in {f"r{i}" for i in range(6)}


def test_eviction_removes_the_least_reused_entry(store: SQLiteStore) -> None:
    for k in ("a", "b", "c"):
        store.put(_entry(k))
    store.touch("a", "w1")
    store.touch("c", "w2")
    assert store.evict(2) == ["b"]
    assert store.count() == 2


def test_reuse_scores_decay_with_the_half_life(store: SQLiteStore) -> None:
    store.put(_entry("old"))
    store.put(_entry("new"))
    t0 = time.time()
    for _ in range(3):
        store.touch("old", "w1", now=t0)  # three reuses long ago ...
    store.touch("new", "w1", now=t0 + 1_000)  # ... lose to one reuse ten half-lives later
    assert store.evict(1) == ["old"]


def test_cross_workflow_reuse_counts_more_than_repeat_reuse(store: SQLiteStore) -> None:
    store.put(_entry("mine"))
    store.put(_entry("shared"))
    now = time.time()
    store.touch("mine", "w1", now=now)
    store.touch("shared", "other-project", now=now)
    assert store.lowest() is not None and store.lowest()[0] == "mine"


def test_sightings_count_distinct_origins(store: SQLiteStore) -> None:
    store.sight("k", "w1")
    store.sight("k", "w1")
    assert store.sight("k", "w2") == 2


def test_an_oversized_artifact_is_refused_and_nothing_is_stored(home: Path) -> None:
    s = SQLiteStore(home / "small.sqlite", max_entry_bytes=100)
    with pytest.raises(ExpressionTooLargeError):
        s.put(_entry("big", "x" * 1000))
    assert s.get("big") is None
    s.close()


def test_checkpoints_are_ordered_and_can_be_truncated(store: SQLiteStore) -> None:
    for i in range(4):
        store.save_checkpoint("chain", i, {"i": i})
    store.drop_checkpoints("chain", 1)
    assert [i for i, _ in store.checkpoints("chain")] == [0, 1]
