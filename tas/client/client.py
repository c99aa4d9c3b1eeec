"""`tas.client.Client`: the API over httpx, for scripts, notebooks and the `tas` CLI's verbs.

It imports nothing of the server (no torch, no SQLAlchemy, no FastAPI: a contract test holds it to
httpx and the standard library), so `pip install tas` on a laptop is enough to drive a remote tas.

The one subtle part is `events()`: an SSE connection can drop at any moment (a proxy's idle
timeout, a server restart, a network blip), and a stream that merely ended says nothing about the
job. So the reader reconnects with the last event id it saw (`Last-Event-ID`), backing off between
tries, and ends only on the job's own terminal event, or when re-reading the job shows it finished.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from tas.client.errors import (
    ApiError,
    ConnectionFailed,
    JobCancelled,
    JobFailed,
    SearchCancelled,
    SearchFailed,
    WaitTimeout,
)
from tas.client.sse import Event, SseParser
from tas.client.types import (
    FINISHED,
    Alias,
    Dataset,
    Job,
    LogLine,
    LogPage,
    Model,
    Predictions,
    Search,
)

#: Where `Client()` connects when neither `url` nor TAS_URL says (what `tas serve` binds).
DEFAULT_URL = "http://127.0.0.1:8000"
#: An event stream is quiet between a job's changes; the server pings every 15 s, so a read that
#: waits this long without a byte means a dead connection, not a slow job.
STREAM_READ_TIMEOUT_S = 60.0

#: `GET /jobs/{id}/metrics`'s answer: a dict per row (named here: the API classes have a `list`).
MetricRows = list[dict[str, Any]]


@dataclass(frozen=True)
class Retry:
    """How a dropped connection is retried: `attempts` tries in a row (reset by any event that
    arrives), waiting `initial_s`, then twice as long each time, at most `max_s`."""

    attempts: int = 8
    initial_s: float = 0.5
    max_s: float = 8.0

    def delay(self, failures: int) -> float:
        return float(min(self.max_s, self.initial_s * 2 ** max(0, failures - 1)))


def _detail(r: httpx.Response) -> Any:
    try:
        body = r.json()
    except ValueError:
        return r.text or r.reason_phrase
    return body.get("detail", body) if isinstance(body, dict) else body


def _newer(event_id: str, last: str | None) -> bool:
    """Whether an event's id is past the last one handed on of its kind. tas's ids increase; after
    a reconnect an event at or before the last one is one already seen (a server that ignores
    Last-Event-ID re-sends the job's current state first). Compared per kind of event, as each
    kind may number its own; ids that are not integers are never skipped: their order is not the
    client's to judge."""
    if last is None:
        return True
    try:
        return int(event_id) > int(last)
    except ValueError:
        return True


class Client:
    """A connection to a tas API.

    `url` defaults to TAS_URL (else http://127.0.0.1:8000), `api_key` to TAS_API_KEY (sent as
    `Authorization: Bearer`; a loopback server with no keys needs none). `jobs`, `datasets` and
    `models` and `searches` hold the calls; every error the API answers is an `ApiError` carrying its status
    and `detail`, and an unreachable server is `ConnectionFailed`."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retry: Retry | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = (url or os.environ.get("TAS_URL") or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("TAS_API_KEY")
        headers = {"User-Agent": "tas-client"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )
        self.timeout = timeout
        self.retry = retry or Retry()
        self.sleep = sleep
        self.jobs = JobsApi(self)
        self.datasets = DatasetsApi(self)
        self.models = ModelsApi(self)
        self.searches = SearchesApi(self)

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call; an error status becomes ApiError, a transport failure ConnectionFailed."""
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach {self.url}: {exc}") from exc
        if r.status_code >= 400:
            raise ApiError(r.status_code, _detail(r), method=method, path=path)
        return r

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def pages(self, path: str, params: dict[str, Any]) -> Iterator[httpx.Response]:
        """GET `path` with `params`, then each page its `Link: <...>; rel="next"` header names,
        as the iteration reaches it. The link is followed as given: it carries the first
        request's filters and the paging (params, even empty ones, would replace its query)."""
        url: str | None = path
        query: dict[str, Any] | None = params
        while url is not None:
            r = self.request("GET", url, params=query)
            yield r
            url, query = _next_link(r), None

    def stream_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=max(self.timeout, STREAM_READ_TIMEOUT_S))


def _next_link(r: httpx.Response) -> str | None:
    """The path of a `Link: <...>; rel="next"` header, or None on the last page."""
    m = re.search(r'<([^>]+)>\s*;\s*rel="next"', r.headers.get("link", ""))
    return m.group(1) if m else None


class JobsApi:
    def __init__(self, client: Client) -> None:
        self.client = client

    def submit(self, spec: Mapping[str, Any]) -> Job:
        """Queue a job (the spec as POST /jobs takes it); a refused spec is ApiError 422 whose
        message names the field at fault."""
        return Job.of(self.client.json("POST", "/jobs", json=dict(spec)), self)

    def get_raw(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.client.json("GET", f"/jobs/{job_id}")
        return data

    def get(self, job_id: str) -> Job:
        return Job.of(self.get_raw(job_id), self)

    def list(
        self,
        *,
        status: str | Sequence[str] | None = None,
        name: str | None = None,
        tags: Mapping[str, str] | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
        sort: str | None = None,
        limit: int | None = None,
        page_size: int = 50,
    ) -> Iterator[Job]:
        """Newest first unless `sort` says otherwise (created_at, name, status, duration, each
        reversed by a leading `-`), filtered and ordered by the server; pages are fetched as the
        iteration reaches them (`next_cursor`), until `limit` jobs or the last page."""
        params: dict[str, Any] = {"limit": min(page_size, limit or page_size)}
        if sort:
            params["sort"] = sort
        if status:
            params["status"] = [status] if isinstance(status, str) else list(status)
        if name:
            params["name"] = name
        if tags:
            params["tag"] = [f"{k}:{v}" for k, v in tags.items()]
        if created_after:
            params["created_after"] = created_after
        if created_before:
            params["created_before"] = created_before
        seen = 0
        while True:
            page = self.client.json("GET", "/jobs", params=params)
            for item in page["items"]:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield Job.of(item, self)
            cursor = page.get("next_cursor")
            if not cursor or (limit is not None and seen >= limit):
                return
            params["cursor"] = cursor

    def cancel_raw(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.client.json("POST", f"/jobs/{job_id}/cancel")
        return data

    def cancel(self, job_id: str) -> Job:
        """Ask the job to stop: a queued job is cancelled at once, a running one at its next step.
        ApiError 409 once it has finished."""
        return Job.of(self.cancel_raw(job_id), self)

    def metrics(
        self,
        job_id: str,
        *,
        keys: Sequence[str] | None = None,
        max_points: int | None = None,
        kind: str | None = None,
    ) -> MetricRows:
        """`GET /jobs/{id}/metrics`: every row per epoch (`kind="step"`: per logged step), each
        with `epoch`, `step` and the metric keys, the server's pages (10,000 rows each) followed
        by their `Link` header; with `max_points`, downsampled points (one answer) that also
        carry their `bucket` (rows, min, max)."""
        first: dict[str, Any] = {}
        if keys:
            first["keys"] = ",".join(keys)
        if max_points is not None:
            first["max_points"] = max_points
        if kind is not None:
            first["kind"] = kind
        rows: MetricRows = []
        for page in self.client.pages(f"/jobs/{job_id}/metrics", first):
            rows.extend(page.json())
        return rows

    def predictions(
        self, job_id: str, *, split: str | None = None, page_size: int = 1_000
    ) -> Iterator[dict[str, Any]]:
        """`GET /jobs/{id}/predictions`: each held-out sample's row (index, label or value, the
        prediction), in the split's order, pages fetched (`page_size` rows, at most 10,000) as
        the iteration reaches them by the `Link` header. `split`: val or test; default, the split
        the evaluate stage reported on. ApiError 409 until the job has succeeded."""
        first: dict[str, Any] = {"limit": page_size}
        if split is not None:
            first["split"] = split
        for page in self.client.pages(f"/jobs/{job_id}/predictions", first):
            yield from page.json()["predictions"]

    def logs(self, job_id: str, *, after: int | None = None, limit: int | None = None) -> LogPage:
        """The job's log lines after the cursor `after` (from the start without one), and the
        cursor to pass next (`next_after`)."""
        params: dict[str, Any] = {}
        if after is not None:
            params["after"] = after
        if limit is not None:
            params["limit"] = limit
        page = self.client.json("GET", f"/jobs/{job_id}/logs", params=params)
        items = page.get("items", []) if isinstance(page, dict) else page
        nxt = page.get("next_after") if isinstance(page, dict) else None
        return LogPage([LogLine.of(i) for i in items], None if nxt is None else int(nxt))

    def iter_logs(
        self, job_id: str, *, follow: bool = False, poll_s: float = 1.0
    ) -> Iterator[LogLine]:
        """Every log line, in order; with `follow`, also the lines written until the job
        finishes (read once more after it has, so the last lines are never lost)."""
        after: int | None = None
        while True:
            finished = not follow or self.get_raw(job_id)["status"] in FINISHED
            while True:
                page = self.logs(job_id, after=after)
                yield from page.items
                if page.next_after is not None:
                    after = page.next_after
                if not page.items:
                    break
            if finished:
                return
            self.client.sleep(poll_s)

    def wait(self, job: Job, *, timeout: float | None = None, poll_s: float = 1.0) -> Job:
        """Poll the job until it finishes (riding out a server restart: a failed read is retried
        as a dropped stream is). Succeeded: the job. Failed: JobFailed. Cancelled: JobCancelled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        retry, failures = self.client.retry, 0
        while True:
            try:
                job.update(self.get_raw(job.id))
                failures = 0
            except ConnectionFailed:
                failures += 1
                if failures > retry.attempts:
                    raise
            if job.finished:
                return _outcome(job)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job.id} still {job.status} after {timeout} s")
            pause = retry.delay(failures) if failures else poll_s
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            self.client.sleep(pause)

    def events(self, job: Job) -> Iterator[Event]:
        """The job's Server-Sent Events, until it finishes. `event: job` events (the job as
        GET /jobs/{id} shows it) update `job` in place; the other kinds (`log`, `metric`, `end`)
        pass through untouched.

        A connection that drops, or a stream the server ends before the job has, is reconnected
        after a back-off with `Last-Event-ID`; events at or before that id are not repeated. A
        dropped stream is never the end: the end is the job's finished status, from its event or,
        when that event was missed, from reading the job again (then handed on as a last `job`
        event with no id)."""
        client, retry = self.client, self.client.retry
        last_id: str | None = None  # sent back as Last-Event-ID, as a browser does
        last_by_kind: dict[str, str] = {}  # what was handed on, per kind of event
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            pause: float | None = None
            try:
                with client.http.stream(
                    "GET",
                    f"/jobs/{job.id}/events",
                    headers=headers,
                    timeout=client.stream_timeout(),
                ) as r:
                    if r.status_code == 429:
                        r.read()
                        pause = _retry_after(r)
                    elif r.status_code >= 400:
                        r.read()
                        raise ApiError(
                            r.status_code, _detail(r), method="GET", path=f"/jobs/{job.id}/events"
                        )
                    else:
                        parser = SseParser()
                        for line in r.iter_lines():
                            event = parser.feed(line)
                            if event is None:
                                continue
                            failures = 0
                            if event.id is not None:
                                last_id = event.id
                                if not _newer(event.id, last_by_kind.get(event.event)):
                                    continue
                                last_by_kind[event.event] = event.id
                            if event.event == "job":
                                job.update(event.json())
                            yield event
                            if event.event == "job" and job.finished:
                                return
                            if event.event == "end":
                                # The server's word that the job finished; its last `job`
                                # event may have gone with a dropped stream.
                                if not job.finished:
                                    job.update(self.get_raw(job.id))
                                return
            except httpx.TransportError:
                pass  # dropped: decided below, with the job's own status
            failures += 1
            if failures > retry.attempts:
                raise ConnectionFailed(
                    f"the event stream of job {job.id} at {client.url} dropped {failures - 1}"
                    " times in a row"
                )
            client.sleep(pause if pause is not None else retry.delay(failures))
            try:
                data = self.get_raw(job.id)
            except ConnectionFailed:
                continue  # still unreachable: the next try counts it
            if data["status"] in FINISHED:
                job.update(data)
                yield Event(event="job", data=json.dumps(data))
                return


def _retry_after(r: httpx.Response) -> float:
    try:
        return max(0.0, float(r.headers.get("retry-after", "5")))
    except ValueError:
        return 5.0


def _outcome(job: Job) -> Job:
    if job.status == "failed":
        raise JobFailed(job)
    if job.status == "cancelled":
        raise JobCancelled(job)
    return job


class SearchesApi:
    """Hyperparameter searches: a base job spec, a space over its paths, an objective; the
    server's controller runs the trials as ordinary jobs (each in `/jobs` with `search_id`)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def create(self, body: Mapping[str, Any]) -> Search:
        """Start a search (the body as POST /searches takes it: name, spec, space, objective,
        sampler, pruner, max_trials, max_concurrent, model_name). A space that could produce an
        invalid spec is ApiError 422 naming the path."""
        return Search.of(self.client.json("POST", "/searches", json=dict(body)), self)

    def get_raw(self, search_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.client.json("GET", f"/searches/{search_id}")
        return data

    def get(self, search_id: str) -> Search:
        return Search.of(self.get_raw(search_id), self)

    def list(
        self,
        *,
        status: str | Sequence[str] | None = None,
        limit: int | None = None,
        page_size: int = 50,
    ) -> Iterator[Search]:
        """Newest first, filtered by the server; pages are fetched as the iteration reaches them
        (`next_cursor`), until `limit` searches or the last page. The items carry no trials."""
        params: dict[str, Any] = {"limit": min(page_size, limit or page_size)}
        if status:
            params["status"] = [status] if isinstance(status, str) else list(status)
        seen = 0
        while True:
            page = self.client.json("GET", "/searches", params=params)
            for item in page["items"]:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield Search.of(item, self)
            cursor = page.get("next_cursor")
            if not cursor or (limit is not None and seen >= limit):
                return
            params["cursor"] = cursor

    def cancel_raw(self, search_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.client.json("POST", f"/searches/{search_id}/cancel")
        return data

    def cancel(self, search_id: str) -> Search:
        """Stop the search: it asks for no more trials and its running trials are cancelled."""
        return Search.of(self.cancel_raw(search_id), self)

    def watch(
        self, search: Search, *, poll_s: float = 2.0, timeout: float | None = None
    ) -> Iterator[Search]:
        """Poll the search until it finishes, handing it on (updated in place) each time the
        API's answer changes, the first read included. A failed read is retried as a dropped
        event stream is (a server restart is ridden out); WaitTimeout after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        retry, failures = self.client.retry, 0
        last: dict[str, Any] | None = None
        while True:
            try:
                data = self.get_raw(search.id)
                failures = 0
            except ConnectionFailed:
                failures += 1
                if failures > retry.attempts:
                    raise
            else:
                if data != last:
                    last = data
                    search.update(data)
                    yield search
            if search.finished:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"search {search.id} still {search.status} after {timeout} s")
            pause = retry.delay(failures) if failures else poll_s
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            self.client.sleep(pause)

    def wait(self, search: Search, *, timeout: float | None = None, poll_s: float = 2.0) -> Search:
        """Until the search finishes. Succeeded: the search. Failed: SearchFailed. Cancelled:
        SearchCancelled."""
        for _ in self.watch(search, poll_s=poll_s, timeout=timeout):
            pass
        if search.status == "failed":
            raise SearchFailed(search)
        if search.status == "cancelled":
            raise SearchCancelled(search)
        return search


class DatasetsApi:
    #: The form fields POST /datasets takes besides the file.
    OPTIONS = ("name", "format", "target", "task", "size")

    def __init__(self, client: Client) -> None:
        self.client = client

    def upload(self, path: str | os.PathLike[str], **options: str | int | None) -> Dataset:
        """Upload a CSV, an NPZ or a ZIP of images; `options` are the form's fields (name,
        format, target, task, size). The same bytes with the same options give the same
        dataset back."""
        unknown = set(options) - set(self.OPTIONS)
        if unknown:
            raise TypeError(
                f"unknown upload option(s) {sorted(unknown)}; the API takes {list(self.OPTIONS)}"
            )
        data = {k: str(v) for k, v in options.items() if v is not None}
        p = Path(path)
        with p.open("rb") as fh:
            files: dict[str, tuple[str, BinaryIO, str]] = {
                "file": (p.name, fh, "application/octet-stream")
            }
            return Dataset.of(self.client.json("POST", "/datasets", data=data, files=files))

    def get(self, dataset_id: str) -> Dataset:
        return Dataset.of(self.client.json("GET", f"/datasets/{dataset_id}"))

    def list(self, *, page_size: int = 50) -> Iterator[Dataset]:
        """The built-ins, then your uploads, newest first."""
        params: dict[str, Any] = {"limit": page_size}
        while True:
            page = self.client.json("GET", "/datasets", params=params)
            for item in page["items"]:
                yield Dataset.of(item)
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]


class ModelsApi:
    def __init__(self, client: Client) -> None:
        self.client = client

    def list(self) -> Iterator[Model]:
        """Your models in name order, each with its newest versions."""
        for page in self.client.pages("/models", {}):
            for item in page.json():
                yield Model.of(item)

    def get(self, name: str) -> Model:
        return Model.of(self.client.json("GET", f"/models/{name}"))

    def predict(
        self,
        model: str,
        inputs: Sequence[Any] | None = None,
        *,
        images: Sequence[str] | None = None,
        top_k: int | None = None,
    ) -> Predictions:
        """Predict with a job id, a model name, `name:version` or `name@alias`: `inputs` raw
        samples (feature lists, rows by feature name, or nested arrays), or `images` (base64)."""
        body: dict[str, Any] = {"model": model}
        if inputs is not None:
            body["inputs"] = list(inputs)
        if images is not None:
            body["images"] = list(images)
        if top_k is not None:
            body["top_k"] = top_k
        return Predictions.of(self.client.json("POST", "/predict", json=body))

    def set_alias(self, name: str, alias: str, version: int) -> Alias:
        """Point `name@alias` at `version` (the deploy step: used by the next /predict)."""
        return Alias.of(
            self.client.json("PUT", f"/models/{name}/aliases/{alias}", json={"version": version})
        )

    def download(
        self,
        name: str,
        version: int | None = None,
        *,
        format: str = "safetensors",
        path: str | os.PathLike[str] | None = None,
    ) -> Path:
        """Save a version's weights (safetensors with the model card embedded) or its ONNX export.
        `name` may also be `name@alias` or `name:version`; without a version, the latest. `path`
        is a file, or a directory for the server's file name (default: the current directory)."""
        url = (
            f"/models/{name}/download"
            if version is None
            else f"/models/{name}/versions/{version}/download"
        )
        try:
            with self.client.http.stream(
                "GET", url, params={"format": format}, timeout=self.client.stream_timeout()
            ) as r:
                if r.status_code >= 400:
                    r.read()
                    raise ApiError(r.status_code, _detail(r), method="GET", path=url)
                m = re.search(r'filename="([^"/\\]+)"', r.headers.get("content-disposition", ""))
                filename = m.group(1) if m else f"{name}.{format}"
                target = Path(path) if path is not None else Path.cwd()
                if target.is_dir():
                    target = target / filename
                partial = target.with_name(target.name + ".part")
                with partial.open("wb") as fh:
                    for chunk in r.iter_bytes():
                        fh.write(chunk)
                partial.replace(target)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach {self.client.url}: {exc}") from exc
        return target
