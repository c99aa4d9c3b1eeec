"""Which model a `/predict` reference means, and a cache of loaded predictors."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.predictor import Predictor
from tas.db.models import Job, JobStatus, ModelVersion
from tas.errors import ModelNotFound, ModelNotReady

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def resolve(session: Session, ref: str, *, tenant: str) -> ModelVersion:
    """A job id, `name` (latest version) or `name:version`."""
    if _JOB_ID.match(ref):
        job = session.get(Job, ref)
        if job is None or job.tenant != tenant:
            raise ModelNotFound(ref)
        if job.status != JobStatus.succeeded.value:
            raise ModelNotReady(ref, job.status)
        mv = session.scalar(select(ModelVersion).where(ModelVersion.job_id == ref))
        if mv is None:
            raise ModelNotFound(ref)
        return mv
    name, _, version = ref.partition(":")
    q = select(ModelVersion).where(ModelVersion.tenant == tenant, ModelVersion.name == name)
    if version:
        if not version.isdigit():
            raise ModelNotFound(ref)
        q = q.where(ModelVersion.version == int(version))
    mv = session.scalar(q.order_by(ModelVersion.version.desc()).limit(1))
    if mv is None:
        raise ModelNotFound(ref)
    return mv


class PredictorCache:
    """Loaded models stay in memory (LRU by count): loading costs a file read and a model build."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, Predictor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_dir: str) -> Predictor:
        with self._lock:
            hit = self._items.get(model_dir)
            if hit is not None:
                self._items.move_to_end(model_dir)
                return hit
        predictor = Predictor.from_dir(Path(model_dir))
        with self._lock:
            self._items[model_dir] = predictor
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return predictor
