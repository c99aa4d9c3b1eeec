"""GET /metrics, parsed as Prometheus parses it: the database's figures (queue depth, jobs, running
jobs per worker, job and stage durations, epochs and samples trained) and /predict's latency and
batch-size histograms per model."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from app.metrics import LocalHistogram
from tas.store import jobs as job_store
from tas.store import leases as lease_store
from tas.store import workers
from tas.store.orm import Job, JobStage, MetricRow, utcnow
from tests.helpers.registry import IMAGE_SHAPE, Registry


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_database_figures(client: TestClient, registry: Registry) -> None:
    now = utcnow()
    with registry.sessions() as s:
        done = job_store.create_job(s, {"name": "done"}, tenant="default", max_attempts=3)
        done.status, done.started_at, done.finished_at = (
            "succeeded",
            now,
            now + timedelta(seconds=42),
        )
        done.created_at = now - timedelta(seconds=2)
        s.add(
            JobStage(
                job_id=done.id,
                attempt=1,
                name="preprocess",
                status="succeeded",
                started_at=now,
                finished_at=now + timedelta(seconds=0.3),
                outputs={"train_samples": 120, "val_samples": 30},
            )
        )
        s.add(
            JobStage(
                job_id=done.id,
                attempt=1,
                name="train",
                status="succeeded",
                started_at=now,
                finished_at=now + timedelta(seconds=40),
            )
        )
        for epoch in (1, 2, 3):
            s.add(MetricRow(job_id=done.id, epoch=epoch, step=-1, values={"train_loss": 1.0}))
        s.add(MetricRow(job_id=done.id, epoch=1, step=5, values={"train_loss": 1.0}))  # a step row
        for name in ("g1", "g2"):
            job_store.create_job(
                s, {"name": name, "resources": {"device": "cuda"}}, tenant="default", max_attempts=3
            )
        running = job_store.create_job(s, {"name": "r"}, tenant="default", max_attempts=3)
        s.commit()
    with registry.sessions() as s:
        assert lease_store.claim(s, running.id, "w1@h/7/ab", 30) is not None
        workers.register(s, workers.WorkerInfo("w1@h", "h", 7, ["default"], [], {}, 1))
        workers.register(s, workers.WorkerInfo("w2@h", "h", 8, ["cpu"], [], {}, 1))
        s.commit()

    m = scrape(client)
    assert m[("tas_queue_depth", (("queue", "gpu"),))] == 2
    assert m[("tas_queue_depth", (("queue", "cpu"),))] == 0
    assert m[("tas_jobs", (("status", "queued"),))] == 2
    assert m[("tas_jobs", (("status", "running"),))] == 1
    assert m[("tas_worker_running_jobs", (("worker", "w1@h"),))] == 1
    assert m[("tas_worker_running_jobs", (("worker", "w2@h"),))] == 0
    assert m[("tas_workers", (("state", "online"),))] == 2
    job = (("status", "succeeded"),)
    assert m[("tas_job_duration_seconds_count", job)] == 1
    assert m[("tas_job_duration_seconds_sum", job)] == pytest.approx(42.0, abs=0.01)
    assert m[("tas_job_duration_seconds_bucket", (("le", "30.0"), *job))] == 0
    assert m[("tas_job_duration_seconds_bucket", (("le", "60.0"), *job))] == 1
    wait = (("queue", "default"),)
    assert m[("tas_job_queue_wait_seconds_sum", wait)] >= 2.0
    train = (("name", "train"), ("status", "succeeded"))
    assert m[("tas_stage_duration_seconds_count", train)] == 1
    assert m[("tas_stage_duration_seconds_bucket", (("le", "30.0"), *train))] == 0
    assert m[("tas_stage_duration_seconds_bucket", (("le", "60.0"), *train))] == 1
    assert m[("tas_epochs_trained_total", ())] == 3
    assert m[("tas_samples_trained_total", ())] == 3 * 120

    with registry.sessions() as s:  # its worker finished it
        s.execute(update(Job).where(Job.id == running.id).values(status="succeeded"))
        s.commit()
    assert scrape(client)[("tas_worker_running_jobs", (("worker", "w1@h"),))] == 0


def test_predict_latency_and_batch_size_per_model(client: TestClient, registry: Registry) -> None:
    registry.add("img")
    registry.add("img", seed=1)  # version 2
    x = np.random.default_rng(0).random((5, *IMAGE_SHAPE), dtype=np.float32)
    for n in (1, 5, 2):
        r = client.post("/predict", json={"model": "img:1", "inputs": x[:n].tolist()})
        assert r.status_code == 200, r.text
    assert (
        client.post("/predict", json={"model": "img", "inputs": x[:3].tolist()}).status_code == 200
    )

    m = scrape(client)
    v1, v2 = (("model", "img:1"),), (("model", "img:2"),)
    assert m[("tas_predict_latency_seconds_count", v1)] == 3
    assert 0 < m[("tas_predict_latency_seconds_sum", v1)] < 30
    assert m[("tas_predict_batch_size_count", v1)] == 3  # sequential requests: a pass each
    assert m[("tas_predict_batch_size_sum", v1)] == 8
    assert m[("tas_predict_batch_size_bucket", (("le", "1.0"), *v1))] == 1
    assert m[("tas_predict_batch_size_bucket", (("le", "2.0"), *v1))] == 2
    assert m[("tas_predict_batch_size_sum", v2)] == 3
    assert m[("tas_predict_latency_seconds_count", v2)] == 1
    # a refused request is not a prediction
    bad = client.post("/predict", json={"model": "img:1", "inputs": [[1.0]]})
    assert bad.status_code == 422
    assert scrape(client)[("tas_predict_latency_seconds_count", v1)] == 3


def test_local_histogram_buckets_as_prometheus_reads_them() -> None:
    h = LocalHistogram((1, 2, 4))
    for v in (0.5, 1, 1.5, 4, 9):  # a value equal to a bound falls in that bucket (le)
        h.observe(v)
    family = HistogramMetricFamily("x", "x", labels=["model"])
    h.add_to(family, ["m:1"])
    got = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert got[("x_bucket", "1.0")] == 2 and got[("x_bucket", "2.0")] == 3
    assert got[("x_bucket", "4.0")] == 4 and got[("x_bucket", "+Inf")] == 5
    assert got[("x_count", None)] == 5 and got[("x_sum", None)] == 16.0
