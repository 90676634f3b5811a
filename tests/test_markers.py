"""The marker check (tests/_fixtures/markers.py) names what an unmarked test lacks."""

from __future__ import annotations

import pytest

from tests._fixtures.markers import missing_markers


@pytest.mark.parametrize(
    ("fixtures", "markers", "missing"),
    [
        (["tmp_path", "redis_url"], [], {"redis"}),
        (["redis_url"], ["redis"], set()),
        (["serve_real"], ["serve"], {"model"}),
        (["serve_process", "temporal_server"], ["serve"], {"temporal"}),
        (["real_engine"], ["parametrize"], {"model"}),
        (["tiny_model", "model_tokenizer", "bus"], [], set()),
    ],
)
def test_fixtures_that_start_servers_or_load_the_model_need_their_markers(
    fixtures: list[str], markers: list[str], missing: set[str]
) -> None:
    assert missing_markers(fixtures, markers, loaded_real_model=False) == missing


def test_loading_the_real_model_needs_the_model_marker() -> None:
    assert missing_markers([], [], loaded_real_model=True) == {"model"}
    assert missing_markers([], ["model"], loaded_real_model=True) == set()
