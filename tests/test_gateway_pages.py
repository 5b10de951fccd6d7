"""The gateway's browser-facing routes (pages.py) over real sockets, and the recent-speech
window behind ``/speech`` (recent.py) on its own. No browser needed."""

from __future__ import annotations

import httpx

from aivtuber_common.health import InputHealth, OutputHealth, WorkerView
from aivtuber_gateway.pages import speech_view
from aivtuber_gateway.recent import RecentSpeech
from tests.frontend import frontend, listen, speak
from tests.test_end_to_end import stack


class Clock:
    def __init__(self, now: float = 6000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_recent_speech_keeps_only_the_window_and_counts_late_frames_per_minute() -> None:
    clock = Clock()
    recent = RecentSpeech(window_s=600, late_frame_s=0.25, clock=clock)
    recent.first_audio(0.5)  # will fall out of the window
    clock.now += 601
    for seconds in (0.1, 0.2, 0.3, 0.4):
        recent.first_audio(seconds)
    recent.frame_gap(0.04)
    recent.frame_gap(0.3)  # late
    clock.now += 60
    recent.frame_gap(1.0)  # late, next minute
    view = recent.snapshot()
    ttfa = view["time_to_first_audio"]
    assert ttfa["count"] == 4 and [ms for _, ms in ttfa["samples"]] == [100, 200, 300, 400]
    assert ttfa["p50_ms"] == 200 and ttfa["p95_ms"] == 400
    assert view["frames"]["sent"] == 7 and view["frames"]["late"] == 2
    assert [(m["frames"], m["late"]) for m in view["frames"]["per_minute"]] == [(6, 1), (1, 1)]


def test_recent_speech_memory_is_bounded_however_many_streams_come() -> None:
    clock = Clock()
    recent = RecentSpeech(max_samples=100, clock=clock)
    for _ in range(10_000):
        recent.first_audio(0.1)
        clock.now += 0.5  # 5000 s: many minutes, most outside the window
        recent.frame_gap(0.04)
    view = recent.snapshot()
    assert view["time_to_first_audio"]["count"] == 100
    assert len(view["frames"]["per_minute"]) <= 11


def test_speech_view_sums_tasks_and_lists_each_workers_voices() -> None:
    workers = [
        WorkerView(
            name="http://w1:8003",
            url="http://w1:8003",
            healthy=True,
            state="ready",
            running=1,
            voices=["joe", "sine"],
        ),
        WorkerView(name="w2-redis", healthy=False, state="starting"),
    ]
    view = speech_view(
        RecentSpeech().snapshot(),
        [InputHealth(status="ok", workers_available=1, workers=workers), None],
        [OutputHealth(subscribers=0, tasks={"streaming": 2, "waiting": 1, "completed": 9}), None],
    )
    assert view["tasks"] == {
        "in_flight": 3,
        "by_state": {"streaming": 2, "waiting": 1, "completed": 9},
    }
    # A worker on the Redis bus has a name, not a URL: the name stands in.
    assert [w["url"] for w in view["workers"]] == ["http://w1:8003", "w2-redis"]
    assert view["workers"][0]["voices"] == [{"name": "joe"}, {"name": "sine"}]
    assert view["workers"][1]["voices"] == []
    assert view["handlers"] == {"input": 1, "output": 1}


async def test_speech_reports_a_spoken_line_without_its_task_id() -> None:
    async with stack(audio_metrics=True) as s:
        async with frontend(s.url) as (ws, _):
            task_id = await speak(ws, "Counted at the gateway.")
            heard = await listen(s.url, task_id)
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{s.gateway.http_url}/speech")
    assert response.status_code == 200
    view = response.json()
    assert view["time_to_first_audio"]["count"] == 1
    assert view["frames"]["sent"] == len(heard.chunks)
    assert view["tasks"]["in_flight"] == 0 and view["handlers"] == {"input": 1, "output": 1}
    assert [w["url"] for w in view["workers"]] == [s.workers[0].http_url]
    # The worker's ready voices, as the input handler's probe of its /health found them.
    assert view["workers"][0]["voices"] == [{"name": "sine"}]
    assert task_id[:8] not in response.text


async def test_the_client_script_and_the_demo_page_are_served_openly_and_safely() -> None:
    async with stack() as s, httpx.AsyncClient(base_url=s.gateway.http_url) as http:
        script = await http.get("/static/aivtuber.js")
        demo = await http.get("/demo")
        demo_script = await http.get("/static/demo.js")
        sneaky = await http.get("/static/../pages.py")
        missing = await http.get("/static/nothing.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert "export class AIVTuberClient" in script.text
    assert demo.status_code == 200 and '<script type="module" src="/static/demo.js">' in demo.text
    assert "default-src 'self'" in demo.headers["content-security-policy"]
    assert sneaky.status_code == 404 and missing.status_code == 404
    for text in (demo.text, demo_script.text, script.text):  # offline: nothing from elsewhere
        assert "https://" not in text and "//cdn" not in text and '<script src="http' not in text
