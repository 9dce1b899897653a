"""The explorer under load: clients at once all get answers, and a long run of mixed requests
does not make the server grow. The same functions as ``bench/app_latency.py`` (which runs the
full counts and reports the timings), with small counts; only behaviour is asserted here."""

from __future__ import annotations

from pathlib import Path

from bench import app_latency
from conftest import APP_PIDS


def test_eight_clients_at_once_all_get_their_analysis(server, tmp_path: Path) -> None:
    result = app_latency.concurrent_clients(server, 8, tmp_path)
    assert result["concurrent_errors"] == []


def test_mixed_requests_after_a_warm_up_leave_the_memory_where_it_was(server, tmp_path: Path) -> None:
    result = app_latency.soak(server, APP_PIDS[server], warmup=40, count=60, tmp=tmp_path)
    assert result["soak_failures"] == 0
    # The per-image cache and Gradio's state are bounded: what the warm-up filled is reused.
    assert result["soak_rss_growth"] <= app_latency.GOALS["soak_rss_growth"][1], result
