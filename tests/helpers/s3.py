"""A throwaway S3-protocol server for tests: moto's standalone server (the S3 API s3fs's own tests
run against) in a subprocess on a free loopback port, and the AWS environment that points botocore
(and so s3fs and the artifact store) at it."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.helpers import servers


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables a client process needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            # No instance-metadata lookups for credentials (a 1 s timeout each off EC2).
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def make_bucket(self) -> str:
        """A new, empty bucket's name (one per test keeps tests apart on one server)."""
        import boto3

        name = f"tas-{uuid.uuid4().hex[:12]}"
        env = self.env
        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        ).create_bucket(Bucket=name)
        return name


def bucket_url(server: S3Server, env: Callable[[str, str], None], prefix: str) -> str:
    """A new, empty bucket's `s3://bucket/prefix` URL, with the AWS environment pointing at the
    server set through `env` (e.g. `monkeypatch.setenv`), as a deployment would set it."""
    for name, value in server.env.items():
        env(name, value)
    return f"s3://{server.make_bucket()}/{prefix}"


def unreachable_store_url(env: Callable[[str, str], None]) -> str:
    """An `s3://` URL whose endpoint is a loopback port where nothing listens, set through `env`:
    a store that does not answer. One attempt per request, so a test of it is quick."""
    env("AWS_ENDPOINT_URL", f"http://127.0.0.1:{servers.free_port()}")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_MAX_ATTEMPTS": "1",
    }.items():
        env(name, value)
    return "s3://nowhere/tas"


@contextmanager
def s3_server() -> Iterator[S3Server]:
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("s3fs") is None:
        servers.missing("moto's S3 server and s3fs", "pip install -e '.[dev]'")
    port = servers.free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with servers.http_process(cmd, port, ready_path="/moto-api/") as url:
        yield S3Server(url)
