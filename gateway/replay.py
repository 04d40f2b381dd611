"""Replays run by the gateway (`/admin/replays`): the recorded decisions of one of the
audit logs it reads, scored again by a candidate version through the backend whose
target serves it, at a bounded rate, as a job one can watch (`aios.replay` compares;
`aios replay` is the same from the command line).

Jobs live in this process (the last `KEPT_JOBS`; a job is lost with its replica, and
the report it wrote is the JSON it answered with). Starting one needs `replay:run`;
reading one, `replay:run` or `audit:read` (it shows recorded decisions).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from aios.auditindex import parse_time_ns
from aios.auditlog import records
from aios.errors import AiosError, InvalidInput, NotFound
from aios.ids import new_ulid
from aios.plane import REPLAY_HEADER, model_path
from aios.readable import Names, load_names
from aios.replay import collect, infer_body, report, scores_of
from aios.upstream import HttpUpstream
from gateway.admin import parse
from gateway.routing import Router

KEPT_JOBS = 20
MAX_ROWS = 1_000_000
JSON = (("content-type", "application/json"),)


class ReplayBody(BaseModel):
    """POST /admin/replays."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    candidate: str = Field(pattern=r"^[0-9]+$")
    log: str = ""  # which audit log (default: the only one)
    since: str | None = None  # ISO 8601
    until: str | None = None
    threshold: float = Field(0.5, ge=0, le=1)
    limit: int = Field(100_000, ge=1, le=MAX_ROWS)
    rate: float = Field(500.0, gt=0, le=100_000)  # rows per second
    batch: int = Field(64, ge=1, le=4096)


@dataclass
class Job:
    """One replay: what was asked, how far it is, and its report once done."""

    id: str
    who: str
    asked: ReplayBody
    state: Literal["running", "done", "failed"] = "running"
    rows: int = 0
    scored: int = 0
    error: str = ""
    started: float = field(default_factory=time.time)
    finished: float = 0.0
    result: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "who": self.who, "asked": self.asked.model_dump(),
                "state": self.state, "rows": self.rows, "scored": self.scored,
                "error": self.error, "started": self.started, "finished": self.finished,
                "report": self.result}


class Replays:
    """Starts replays and keeps the last few."""

    def __init__(self, logs: Mapping[str, Path], model_repository: Path, router: Router,
                 backends: Mapping[str, HttpUpstream]) -> None:
        self._logs = dict(logs)
        self._repository = model_repository
        self._router = router
        self._backends = dict(backends)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, who: str, body: Any) -> dict[str, Any]:
        asked: ReplayBody = parse(ReplayBody, body)
        directory = self._log(asked.log)
        names = load_names(self._repository).get((asked.model, asked.candidate))
        if names is None:
            raise InvalidInput(f"candidate: no profile.json for {asked.model} version "
                               f"{asked.candidate} in {self._repository}")
        backend = self._backend(asked.model, asked.candidate)
        try:
            since = parse_time_ns(asked.since, "since") or 0
            until = parse_time_ns(asked.until, "until") or 0
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
        job = Job(new_ulid(), who, asked)
        self._jobs[job.id] = job
        while len(self._jobs) > KEPT_JOBS:
            self._jobs.popitem(last=False)
        task = asyncio.create_task(self._run(job, directory, names, backend, since, until))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job.to_json()

    def job(self, ident: str) -> dict[str, Any]:
        job = self._jobs.get(ident)
        if job is None:
            raise NotFound(f"no replay {ident!r} on this gateway (it keeps the last "
                           f"{KEPT_JOBS})")
        return job.to_json()

    def jobs(self) -> dict[str, Any]:
        return {"replays": [{k: v for k, v in j.to_json().items() if k != "report"}
                            for j in reversed(self._jobs.values())]}

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _log(self, name: str) -> Path:
        if not self._logs:
            raise NotFound("no audit logs are configured (gateway.audit.logs)")
        if not name and len(self._logs) == 1:
            return next(iter(self._logs.values()))
        if name not in self._logs:
            raise InvalidInput(f"log: one of {', '.join(sorted(self._logs))}")
        return self._logs[name]

    def _backend(self, model: str, version: str) -> HttpUpstream:
        table = self._router.table(model)
        for target in table.targets:
            if target.version == version:
                return self._backends[target.backend]
        raise InvalidInput(f"candidate: no target of {model} serves version {version}: add "
                           "one (weight 0 is enough) so the replay knows its backend")

    async def _run(self, job: Job, directory: Path, names: Names, backend: HttpUpstream,
                   since: int, until: int) -> None:
        asked = job.asked
        try:
            recorded = await asyncio.to_thread(collect, records(directory), asked.model,
                                               names.input, names.output, since, until,
                                               asked.limit)
            job.rows = len(recorded)
            if not job.rows:
                raise InvalidInput(f"no recorded decisions of {asked.model} to replay")
            scores = await self._score(job, backend, names, recorded.x)
            job.result = await asyncio.to_thread(
                report, recorded, scores, asked.threshold, [n for n, _ in names.features])
            job.state = "done"
        except (AiosError, ValueError, OSError) as exc:
            job.state, job.error = "failed", str(exc)
        finally:
            job.finished = time.time()

    async def _score(self, job: Job, backend: HttpUpstream, names: Names,
                     x: NDArray[Any]) -> NDArray[Any]:
        asked = job.asked
        path = model_path(asked.model, asked.candidate, "/infer")
        out = np.zeros(x.shape[0], np.float64)
        started = time.monotonic()
        for start in range(0, x.shape[0], asked.batch):
            rows = x[start:start + asked.batch]
            reply = await backend.request("POST", path, infer_body(names.input, names.output,
                                                                   rows), JSON,
                                          {REPLAY_HEADER: "1"})
            if reply.status != 200:
                raise ValueError(f"the backend answered {reply.status} for rows {start}-"
                                 f"{start + len(rows) - 1}: {reply.body[:300]!r}")
            out[start:start + len(rows)] = scores_of(reply.body, names.output, len(rows))
            job.scored = start + len(rows)
            ahead = job.scored / asked.rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        return out
