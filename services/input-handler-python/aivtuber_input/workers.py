"""Submitting tasks to the TTS workers over HTTP: the direct :class:`TaskSubmitter`.

Choice of worker: the least busy healthy one. Each worker's load is what its last
``GET /health`` reported (running + queued, over its engine slots) plus the tasks this handler
gave it since; ties go round-robin. A worker that refuses (503 busy / not_ready), does not
answer within ``worker_timeout_s`` or cannot be reached is skipped for the next one; when
every worker has been tried the client gets ``tts_unavailable``. A refusal about the task
itself (400 bad_request) is the same on every worker and goes straight back to the client;
``unknown_voice`` only once every worker said so (each worker loads only the voices its
config names). :meth:`HttpTaskSubmitter.voices` gathers every worker's ``GET /v1/voices``
for ``list_voices``.

Readiness: a worker is *ready* once its ``GET /health`` answered 200 (voices warm, ingest
connected), or 503 "degraded" only because a voice other than its default failed to load.
Until one is, a submission waits (``ready_wait_s``) while some worker is still
warming up (never probed yet, or answering 503 "starting"); when every worker is down it
fails at once. The input handler's own ``/health`` is 200 only with a ready worker.

Exceptions (all from :mod:`aivtuber_common.transport`)::

    TransportError     code "tts_unavailable"
     ├── SubmitRefused  code taken from the worker's refusal
     └── TaskNotFound   code "task_not_found"
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

import httpx
import structlog
from pydantic import ValidationError

from aivtuber_common.codes import ErrorCode
from aivtuber_common.config import Settings
from aivtuber_common.health import InputHealth, VoiceListing, WorkerHealth, WorkerView
from aivtuber_common.identity import TENANT_HEADER
from aivtuber_common.internal import (
    TASKS_PATH,
    SubmitAccepted,
    SubmitTask,
    TaskCancelled,
    TaskText,
    WorkerRefusal,
)
from aivtuber_common.protocol import VoiceInfo
from aivtuber_common.transport import SubmitRefused, TaskEnded, TaskNotFound, TransportError

__all__ = ["HttpTaskSubmitter", "WorkerStatus", "http_submitter"]

from .activity import ActiveTasks, WorkerEvents
from .refreshes import Refreshes

log = structlog.get_logger("aivtuber_input.workers")

# Which worker took which task for which tenant, so a cancel goes to the right one and only
# from its tenant; bounded, oldest dropped.
MAX_REMEMBERED_TASKS = 10_000
# What a worker said to DELETE: stopped, had it but not running, does not have it (or not
# for this tenant), or could not be asked.
_GONE = "gone"
VOICES_PATH = "/v1/voices"
# list_voices answers from a list at most this old, fetched once for concurrent askers: a
# client repeating list_voices cannot turn into a stream of requests to every worker.
VOICES_CACHE_S = 1.0


@dataclass
class WorkerStatus:
    url: str
    healthy: bool = True  # optimistic until a probe or a submission says otherwise
    busy: bool = False  # refused with 503 since the last probe
    running: int = 0
    queued: int = 0
    capacity: int = 1
    given: int = 0  # tasks given since the last probe
    last_error: str | None = None
    # What the last probe (or submission) said: ready (200), starting (503 "starting": voices
    # still loading), down (anything else), unknown (not probed yet).
    state: Literal["unknown", "starting", "ready", "down"] = "unknown"
    default_voice: str | None = None  # as its last /health said
    voices: list[str] = field(default_factory=list)  # ready ones, as its last /health said

    @property
    def warming(self) -> bool:
        return self.state in ("unknown", "starting")

    @property
    def load(self) -> float:
        return (self.running + self.queued + self.given) / max(1, self.capacity)

    def view(self) -> WorkerView:
        return WorkerView(
            name=self.url,
            url=self.url,
            healthy=self.healthy,
            state=self.state,
            busy=self.busy,
            running=self.running,
            queued=self.queued,
            capacity=self.capacity,
            last_error=self.last_error,
            voices=self.voices,
        )


class HttpTaskSubmitter:
    """Implements :class:`aivtuber_common.transport.TaskSubmitter` over the workers' HTTP API."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        workers: list[str],
        *,
        timeout_s: float,
        token: str | None = None,
        ready_wait_s: float = 0.0,
        on_accepted: Callable[[str, str], None] | None = None,
    ) -> None:
        self.client = client
        self.ready_wait_s = ready_wait_s
        self.on_accepted = on_accepted  # (task id, worker URL): who took which task
        self.workers = [WorkerStatus(url) for url in workers]
        self.timeout = httpx.Timeout(timeout_s)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._rotation = itertools.count()
        self._owners: OrderedDict[str, tuple[WorkerStatus, str | None]] = OrderedDict()
        self._refreshes = Refreshes()  # told after every probe round
        self._voices_lock = asyncio.Lock()
        self._voices_cache: tuple[float, list[VoiceInfo]] | None = None

    async def submit(self, task: SubmitTask) -> SubmitAccepted:
        await self.wait_ready(self.ready_wait_s)
        problems: list[str] = []  # one short reason per worker, in the order tried
        unknown: SubmitRefused | None = None
        for worker in self._candidates():
            try:
                accepted = await self._try(worker, task, problems)
            except SubmitRefused as refused:
                if refused.code != ErrorCode.UNKNOWN_VOICE:
                    raise
                unknown = refused  # another worker may have the voice
                problems.append(f"{worker.url} unknown_voice")
                continue
            if accepted is not None:
                return accepted
        if unknown is not None and all(p.endswith(" unknown_voice") for p in problems):
            raise unknown
        log.warning("no_worker_available", task_id=task.task_id, problems=problems)
        # The client learns why, not where: worker addresses stay in the log.
        reasons = Counter(problem.split(" ", 1)[1] for problem in problems)
        summary = ", ".join(f"{count} {reason}" for reason, count in reasons.items())
        raise TransportError(
            f"No TTS worker is available right now ({summary}); try again in a moment."
        )

    async def cancel(self, task_id: str, tenant: str | None = None) -> bool:
        owner = self._owners.get(task_id)
        if owner is not None and owner[1] != tenant:
            raise _not_found(task_id)  # another tenant's: exactly like an unknown task
        targets = [owner[0]] if owner is not None else self.workers
        results = await asyncio.gather(
            *(self._delete(worker, task_id, tenant) for worker in targets)
        )
        if all(result is None for result in results):
            raise TransportError("No TTS worker could be reached to cancel the task.")
        if any(result is True for result in results):
            return True
        if owner is None and all(result in (_GONE, None) for result in results):
            raise _not_found(task_id)  # no worker has it for this tenant
        return False  # it was this tenant's, and it already ended

    async def text(self, message: TaskText) -> None:
        """More text for a streaming task, to the worker that took it (only its tenant's)."""
        owner = self._owners.get(message.task_id)
        if owner is None or owner[1] != message.tenant:
            raise _not_found(message.task_id)
        worker = owner[0]
        try:
            response = await self.client.post(
                f"{worker.url}{TASKS_PATH}/{message.task_id}/text",
                content=message.model_dump_json(),
                headers={**self.headers, "Content-Type": "application/json"},
                timeout=self.timeout,
            )
        except httpx.HTTPError as exc:
            log.warning("text_failed", worker=worker.url, error=type(exc).__name__)
            raise TransportError("The TTS worker speaking this task cannot be reached.") from exc
        if response.status_code == 200:
            return
        refusal = _refusal(response)
        if response.status_code == 404:
            raise _not_found(message.task_id)
        if response.status_code == 409:
            raise TaskEnded(refusal.message)
        log.warning("text_refused", worker=worker.url, status=response.status_code)
        raise TransportError(refusal.message)

    async def voices(self) -> list[VoiceInfo]:
        """Every worker's voices, merged by name (ready if ready on any worker), sorted."""
        async with self._voices_lock:
            cached = self._voices_cache
            if cached is not None and time.monotonic() - cached[0] < VOICES_CACHE_S:
                return cached[1]
            voices = await self._gather_voices()
            self._voices_cache = (time.monotonic(), voices)
            return voices

    async def _gather_voices(self) -> list[VoiceInfo]:
        answers = await asyncio.gather(*(self._voices_of(worker) for worker in self.workers))
        if all(answer is None for answer in answers):
            raise TransportError("No TTS worker answered the voice list; try again in a moment.")
        merged: dict[str, VoiceInfo] = {}
        for answer in answers:
            for voice in answer or []:
                known = merged.get(voice.name)
                if known is None or (voice.ready and not known.ready):
                    merged[voice.name] = voice
        return [merged[name] for name in sorted(merged)]

    async def refresh(self) -> None:
        """Probe every worker's ``GET /health`` once (concurrently)."""
        await asyncio.gather(*(self._probe(worker) for worker in self.workers))
        self._refreshes.done()

    @property
    def ready(self) -> bool:
        """A worker is ready for a task (warm and reachable)."""
        return any(worker.state == "ready" for worker in self.workers)

    @property
    def default_voice(self) -> str | None:
        return next((w.default_voice for w in self.workers if w.default_voice), None)

    def health(self) -> InputHealth:
        return InputHealth(
            status="ok" if self.ready else "degraded",
            workers_available=self.available,
            workers=[worker.view() for worker in self.workers],
        )

    async def wait_ready(self, timeout_s: float) -> bool:
        """Until a worker is ready, for ``timeout_s`` at most while any is still warming up
        (not when all are down: that is not worth a wait). True if one is ready."""
        return await self._refreshes.wait_ready(
            lambda: self.ready, lambda: any(w.warming for w in self.workers), timeout_s
        )

    async def run_health_checks(self, interval_s: float) -> None:
        """Probe forever; the lifespan owns (and cancels) the task running this."""
        while True:
            await self.refresh()
            await asyncio.sleep(interval_s)

    @property
    def available(self) -> int:
        return sum(1 for w in self.workers if w.state == "ready" and w.healthy and not w.busy)

    # --- internals ------------------------------------------------------------------------

    def _candidates(self) -> list[WorkerStatus]:
        # Rotate first so that equally loaded workers take turns (sorted() is stable).
        start = next(self._rotation) % len(self.workers)
        rotated = self.workers[start:] + self.workers[:start]
        # Unhealthy and busy ones last rather than never: their state may be stale.
        return sorted(rotated, key=lambda w: (not w.healthy, w.busy, w.load))

    async def _try(
        self, worker: WorkerStatus, task: SubmitTask, problems: list[str]
    ) -> SubmitAccepted | None:
        url = worker.url + TASKS_PATH
        try:
            response = await self.client.post(
                url, json=task.model_dump(), headers=self.headers, timeout=self.timeout
            )
        except httpx.TimeoutException:
            self._mark_down(worker, "timed out")
            problems.append(f"{worker.url} timed out")
            return None
        except httpx.HTTPError as exc:
            self._mark_down(worker, f"unreachable: {type(exc).__name__}")
            problems.append(f"{worker.url} unreachable")
            return None
        if response.status_code in (200, 201, 202):
            worker.healthy, worker.busy, worker.last_error = True, False, None
            worker.state = "ready"
            worker.given += 1
            self._remember(task.task_id, worker, task.tenant)
            if self.on_accepted is not None:
                self.on_accepted(task.task_id, worker.url)
            return _accepted(response, task)
        refusal = _refusal(response)
        log.info(
            "worker_refused",
            worker=worker.url,
            status=response.status_code,
            code=refusal.code,
            task_id=task.task_id,
        )
        if response.status_code in (400, 404, 409, 413, 422):
            # About the task itself (unknown voice, bad text): every worker would say so.
            raise SubmitRefused(refusal.code, refusal.message)
        if response.status_code == 503:
            worker.busy = True
        elif response.status_code in (401, 403):
            log.error("worker_rejected_token", worker=worker.url)
            worker.last_error = "rejected the internal token"
        else:
            worker.last_error = f"HTTP {response.status_code}"
        problems.append(f"{worker.url} {refusal.code}")
        return None

    async def _delete(
        self, worker: WorkerStatus, task_id: str, tenant: str | None
    ) -> bool | str | None:
        """True: stopped; False: not running any more; _GONE: the worker does not have it
        for this tenant; None: unreachable."""
        headers = dict(self.headers)
        if tenant is not None:
            headers[TENANT_HEADER] = tenant
        try:
            response = await self.client.delete(
                f"{worker.url}{TASKS_PATH}/{task_id}", headers=headers, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            log.warning("cancel_failed", worker=worker.url, error=type(exc).__name__)
            return None
        if response.status_code == 404:
            return _GONE
        if response.status_code != 200:
            log.warning("cancel_refused", worker=worker.url, status=response.status_code)
            return None
        try:
            return TaskCancelled.model_validate_json(response.content).cancelled
        except ValidationError:
            return True  # it answered 200: the cancel was taken, whatever the body says

    async def _voices_of(self, worker: WorkerStatus) -> list[VoiceInfo] | None:
        """The worker's voices; None when it cannot be asked or answers nonsense."""
        try:
            response = await self.client.get(
                worker.url + VOICES_PATH, headers=self.headers, timeout=self.timeout
            )
            listing = VoiceListing.model_validate_json(response.content)
        except httpx.HTTPError as exc:
            log.warning("voices_unreachable", worker=worker.url, error=type(exc).__name__)
            return None
        except ValidationError as exc:
            log.warning("voices_unexpected", worker=worker.url, error=str(exc)[:200])
            return None
        return [voice.info() for voice in listing.voices]

    async def _probe(self, worker: WorkerStatus) -> None:
        try:
            response = await self.client.get(
                worker.url + "/health", headers=self.headers, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            self._mark_down(worker, f"health check failed: {type(exc).__name__}")
            return
        try:
            report: WorkerHealth | None = WorkerHealth.model_validate_json(response.content)
        except ValidationError:
            report = None  # not a worker's /health: down, whatever the status
        # "degraded" because another voice failed to load: still fit for the default voice.
        healthy = report is not None and (response.status_code == 200 or report.fit)
        if healthy and not worker.healthy:
            log.info("worker_up", worker=worker.url)
        worker.healthy = healthy
        if healthy:
            worker.state = "ready"
        elif response.status_code == 503 and report is not None and report.status == "starting":
            worker.state = "starting"
        else:
            worker.state = "down"
        worker.busy = False
        worker.given = 0
        worker.running = report.running if report else 0
        worker.queued = report.queued if report else 0
        # Load relative to the engine slots (max_concurrent): "capacity" counts its queue
        # too, which would make a loaded worker look idle.
        worker.capacity = report.max_concurrent if report else 1
        worker.default_voice = report.default_voice if report else None
        worker.voices = report.ready_voices if report else []
        worker.last_error = None if worker.healthy else f"health {response.status_code}"

    def _mark_down(self, worker: WorkerStatus, why: str) -> None:
        if worker.healthy:
            log.warning("worker_down", worker=worker.url, reason=why)
        worker.healthy = False
        worker.state = "down"
        worker.last_error = why

    def _remember(self, task_id: str, worker: WorkerStatus, tenant: str | None) -> None:
        self._owners[task_id] = (worker, tenant)
        if len(self._owners) > MAX_REMEMBERED_TASKS:
            self._owners.popitem(last=False)


@contextlib.asynccontextmanager
async def http_submitter(
    settings: Settings,
    active: ActiveTasks,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[HttpTaskSubmitter]:
    """The submitter with its client, health probes and the workers' event sockets
    running; all closed on exit. ``transport`` replaces the network (tests)."""
    config = settings.input_handler
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(transport=transport, limits=limits) as client:
        submitter = HttpTaskSubmitter(
            client,
            list(config.workers),
            timeout_s=config.worker_timeout_s,
            token=settings.internal_token,
            ready_wait_s=config.ready_wait_s,
            on_accepted=active.accepted,
        )
        events = WorkerEvents(
            active, list(config.workers), settings.internal_token, config.worker_timeout_s
        )
        background = [
            asyncio.create_task(submitter.run_health_checks(config.health_interval_s)),
            asyncio.create_task(events.run()),
        ]
        try:
            yield submitter
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)


def _not_found(task_id: str) -> TaskNotFound:
    return TaskNotFound(f"No task {task_id} is known: it never existed or is not yours.")


def _accepted(response: httpx.Response, task: SubmitTask) -> SubmitAccepted:
    try:
        return SubmitAccepted.model_validate_json(response.content)
    except ValidationError:
        # The worker took the task; an unexpected body must not turn that into a failure.
        log.warning("worker_accept_body_unexpected", task_id=task.task_id)
        return SubmitAccepted(task_id=task.task_id, voice=task.voice or "", queued=0)


def _refusal(response: httpx.Response) -> WorkerRefusal:
    try:
        return WorkerRefusal.model_validate_json(response.content)
    except ValidationError:
        return WorkerRefusal(
            code=ErrorCode.BUSY if response.status_code == 503 else f"http_{response.status_code}",
            message=f"The TTS worker answered HTTP {response.status_code}.",
        )
