"""A Python client for the tas API (httpx only: no torch, no server code).

from tas.client import Client

client = Client()  # TAS_URL / TAS_API_KEY, or Client("https://tas.example", api_key="tas_...")
job = client.jobs.submit({"name": "iris", "dataset": {"name": "iris"}, ...})
for event in job.events():  # live; reconnects by itself
    print(job.status, job.progress)
job.wait()  # JobFailed / JobCancelled unless it succeeded
search = client.searches.create({"name": "lr", "spec": {...}, "space": {...}, ...})
search.wait()  # SearchFailed / SearchCancelled unless it succeeded; search.best is a Trial
"""

from tas.client.client import (
    DEFAULT_URL,
    Client,
    DatasetsApi,
    JobsApi,
    ModelsApi,
    Retry,
    SearchesApi,
)
from tas.client.errors import (
    ApiError,
    ConnectionFailed,
    JobCancelled,
    JobEnded,
    JobFailed,
    SearchCancelled,
    SearchEnded,
    SearchFailed,
    TasError,
    WaitTimeout,
)
from tas.client.sse import Event, SseParser
from tas.client.types import (
    FINISHED,
    Alias,
    Dataset,
    Job,
    JobError,
    LogLine,
    LogPage,
    Model,
    ModelVersion,
    Prediction,
    Predictions,
    Progress,
    Search,
    Stage,
    Trial,
)

__all__ = [
    "DEFAULT_URL",
    "FINISHED",
    "Alias",
    "ApiError",
    "Client",
    "ConnectionFailed",
    "Dataset",
    "DatasetsApi",
    "Event",
    "Job",
    "JobCancelled",
    "JobEnded",
    "JobError",
    "JobFailed",
    "JobsApi",
    "LogLine",
    "LogPage",
    "Model",
    "ModelVersion",
    "ModelsApi",
    "Prediction",
    "Predictions",
    "Progress",
    "Retry",
    "Search",
    "SearchCancelled",
    "SearchEnded",
    "SearchFailed",
    "SearchesApi",
    "SseParser",
    "Stage",
    "TasError",
    "Trial",
    "WaitTimeout",
]
