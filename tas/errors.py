"""Domain errors. Services raise these; the API maps them to HTTP in one handler (`status_code`)."""

from __future__ import annotations

from collections.abc import Sequence


class DomainError(Exception):
    status_code = 400
    #: Extra response headers (e.g. Retry-After on a 429).
    headers: dict[str, str] | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(DomainError):
    status_code = 404


class JobNotFound(NotFound):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} not found")


class ModelNotFound(NotFound):
    def __init__(self, ref: str) -> None:
        super().__init__(
            f"model {ref!r} not found; give a job id, a name, name:version or name@alias"
        )


class ModelVersionNotFound(NotFound):
    def __init__(self, name: str, version: int) -> None:
        super().__init__(f"model {name!r} has no version {version}; GET /models/{name} lists them")


class AliasNotFound(NotFound):
    def __init__(self, name: str, alias: str) -> None:
        super().__init__(f"model {name!r} has no alias {alias!r}; GET /models/{name} lists them")


class Conflict(DomainError):
    status_code = 409


class JobFinished(Conflict):
    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(
            f"job {job_id!r} is already {status}; only queued or running jobs can change"
        )


class JobNotResumable(Conflict):
    def __init__(self, job_id: str, status: str) -> None:
        hint = {
            "succeeded": "it has its model; POST /jobs/{id}/clone starts a new job from its spec",
            "queued": "it is already waiting for a worker",
            "running": "it is running; POST /jobs/{id}/cancel stops it, then it can be resumed",
        }.get(status, "")
        super().__init__(
            f"job {job_id!r} is {status}; only a failed or cancelled job can be resumed"
            + (f" ({hint.replace('{id}', job_id)})" if hint else "")
        )


class JobNotFinished(Conflict):
    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(
            f"job {job_id!r} is {status}; only a finished job can be deleted: cancel it first"
            f" (POST /jobs/{job_id}/cancel), then delete it once it is cancelled"
        )


class JobHasModel(Conflict):
    def __init__(self, job_id: str, name: str, version: int) -> None:
        super().__init__(
            f"job {job_id!r} trained model {name}:{version}, which is served from the job's"
            f" files; delete that version first (DELETE /models/{name}/versions/{version}),"
            " then the job"
        )


class ModelNotReady(Conflict):
    def __init__(self, ref: str, status: str) -> None:
        super().__init__(
            f"job {ref!r} is {status}; only a succeeded job has a model to predict with"
        )


class InvalidInput(DomainError):
    """A 422 in FastAPI's own shape: each problem names the field (`loc`) and what is allowed."""

    status_code = 422

    def __init__(self, problems: Sequence[tuple[Sequence[str | int], str]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems))
        self.problems = [(tuple(loc), msg) for loc, msg in problems]


class PayloadTooLarge(DomainError):
    status_code = 413


class TooManyRequests(DomainError):
    """A bounded resource is full for now; `Retry-After` says when to try again."""

    status_code = 429

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


class InvalidUpload(InvalidInput):
    """An upload refused, in FastAPI's 422 shape (`loc` names the form field), with the status the
    problem calls for: 413 too large, 415 an unsupported type, 422 unusable content."""

    def __init__(
        self, problems: Sequence[tuple[Sequence[str | int], str]], status_code: int = 422
    ) -> None:
        super().__init__(problems)
        self.status_code = status_code


def body_error(loc: str | Sequence[str | int], msg: str, status_code: int = 422) -> InvalidUpload:
    """One problem with a request body, located as FastAPI locates its own: `["body", ...loc]`.
    `loc` is a form field's name, or a path into a JSON body (`("images", 3)`; `()` for the body
    as a whole). The status is the one the problem calls for (413 too large, 415 an unsupported
    type); a body's problem is a 422 otherwise."""
    path = (loc,) if isinstance(loc, str) else tuple(loc)
    return InvalidUpload([(("body", *path), msg)], status_code)


class DatasetNotFound(NotFound):
    def __init__(self, dataset_id: str) -> None:
        super().__init__(
            f"dataset {dataset_id!r} not found; GET /datasets lists the built-ins and your uploads"
        )


class WeightsNotFound(NotFound):
    def __init__(self, weights_id: str) -> None:
        super().__init__(
            f"weights {weights_id!r} not found; POST /weights uploads a safetensors file"
        )


class DatasetInUse(Conflict):
    def __init__(self, dataset_id: str, job_ids: Sequence[str]) -> None:
        super().__init__(
            f"dataset {dataset_id!r} is used by {len(job_ids)} queued or running job(s)"
            f" ({', '.join(job_ids[:5])}); cancel them or wait for them to finish"
        )


class WeightsInUse(Conflict):
    def __init__(self, weights_id: str, job_ids: Sequence[str]) -> None:
        super().__init__(
            f"weights {weights_id!r} are the init_from of {len(job_ids)} queued or running"
            f" job(s) ({', '.join(job_ids[:5])}); cancel them or wait for them to finish"
        )


class PredictionsNotReady(Conflict):
    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(
            f"job {job_id!r} is {status}; per-sample predictions exist once it has succeeded"
            " (the evaluate stage writes them)"
        )


class SplitNotFound(NotFound):
    def __init__(self, job_id: str, split: str, available: Sequence[str]) -> None:
        has = ", ".join(available) if available else "none (trained before they were recorded)"
        super().__init__(
            f"job {job_id!r} has no per-sample predictions for the {split} split; available: {has}"
            + (
                " (a test split needs dataset.test_fraction > 0, or a dataset with its own)"
                if split == "test"
                else ""
            )
        )


class ArtifactStoreError(DomainError):
    """The artifact store failed to hand over what the registry says exists: an object whose size
    or sha256 differs from its bundle's manifest, or a registered model whose manifest is gone.
    The request was fine and the server never serves a torn or altered file, so this is the 502
    of a failed upstream (the store), not a 500; retrying does not help until it is repaired."""

    status_code = 502


class ArtifactStoreUnavailable(ArtifactStoreError):
    """The artifact store did not answer (unreachable, refused, timed out): 503, try again."""

    status_code = 503

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


class Unauthorized(DomainError):
    """No key, or one that is not valid. Unknown, revoked, expired and malformed keys all get
    the same answer, so a caller learns nothing about which keys exist."""

    status_code = 401

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers = {"WWW-Authenticate": 'Bearer realm="tas"'}


class MissingScope(DomainError):
    status_code = 403

    def __init__(self, needed: Sequence[str], held: Sequence[str]) -> None:
        wanted = " or ".join(repr(s) for s in needed)
        super().__init__(
            f"this API key lacks the scope {wanted} (it has: {', '.join(sorted(held)) or 'none'})"
        )


class CrossSiteWrite(DomainError):
    """A write that a browser session (cookie) sent without the page's CSRF token, or that
    another site's page sent: a browser attaches cookies to requests other sites make it send,
    so a cookie alone never authorises a change."""

    status_code = 403


class KeyNotFound(NotFound):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"API key {key_id!r} not found")
