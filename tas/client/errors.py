"""What the client raises: one base class, so a script can catch everything tas-related at once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tas.client.types import Job, JobError, Search


class TasError(Exception):
    """Anything the client raises on purpose."""


class ApiError(TasError):
    """The API answered with an error status. `detail` is the API's own `detail`: a sentence for
    a domain error (404, 409, 413, 429...), a list of problems naming their field for a refused
    request (422); `message` is that, made one readable line."""

    def __init__(self, status: int, detail: Any, *, method: str = "", path: str = "") -> None:
        self.status = status
        self.detail = detail
        self.method = method
        self.path = path
        self.message = describe(detail)
        where = f"{method} {path}: " if method else ""
        super().__init__(f"{where}{status} {self.message}")


class ConnectionFailed(TasError):
    """The server could not be reached, or kept dropping the connection past the retries."""


class JobEnded(TasError):
    """A job the caller waited for ended without succeeding."""

    def __init__(self, job: Job, text: str) -> None:
        self.job = job
        super().__init__(text)


class JobFailed(JobEnded):
    """The job failed; `error` is its error (type, message, hint, stage)."""

    def __init__(self, job: Job) -> None:
        self.error: JobError | None = job.error
        what = f"{job.error.type}: {job.error.message}" if job.error else "no error recorded"
        super().__init__(job, f"job {job.id} failed: {what}")


class JobCancelled(JobEnded):
    """The job was cancelled; `error` is whatever the job recorded (usually nothing)."""

    def __init__(self, job: Job) -> None:
        self.error: JobError | None = job.error
        super().__init__(job, f"job {job.id} was cancelled")


class SearchEnded(TasError):
    """A search the caller waited for ended without succeeding."""

    def __init__(self, search: Search, text: str) -> None:
        self.search = search
        super().__init__(text)


class SearchFailed(SearchEnded):
    """The search failed (its trials did, or its study could not go on)."""

    def __init__(self, search: Search) -> None:
        error = search.error
        why = f": {error.get('type', 'Error')}: {error.get('message', '')}" if error else ""
        super().__init__(search, f"search {search.id} failed{why}")


class SearchCancelled(SearchEnded):
    """The search was cancelled (its running trials with it)."""

    def __init__(self, search: Search) -> None:
        super().__init__(search, f"search {search.id} was cancelled")


class WaitTimeout(TasError, TimeoutError):
    """`job.wait(timeout=...)` ran out before the job finished; the job keeps running."""


def describe(detail: Any) -> str:
    """The API's `detail` as one line: its sentence, or each problem as `field.path: message`."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for p in detail:
            if isinstance(p, dict):
                loc = [str(x) for x in p.get("loc", []) if x not in ("body", "query", "path")]
                parts.append(f"{'.'.join(loc)}: {p.get('msg', '')}" if loc else str(p.get("msg")))
            else:
                parts.append(str(p))
        return "; ".join(parts)
    return str(detail)
