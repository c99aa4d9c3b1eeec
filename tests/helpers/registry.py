"""Tiny models written with `save_model` and registered like a succeeded job's, straight into a
test's data dir (no training: each model costs milliseconds)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tas.core.artifact import ModelCard, save_model
from tas.core.data.prepare import Normalizer
from tas.core.models import build_model
from tas.core.spec import ModelSpec
from tas.settings import Settings
from tas.store import jobs as job_store
from tas.store import registry as registry_store
from tas.store.engine import make_engine, make_sessionmaker
from tas.store.orm import Job, JobStatus

IMAGE_SHAPE = (1, 6, 6)


@dataclass
class Registered:
    name: str
    version: int
    job_id: str
    model_dir: str
    model: torch.nn.Module
    card: ModelCard

    def reference(self, x: np.ndarray) -> torch.Tensor:
        """What the model should answer, computed here with plain torch."""
        t = torch.as_tensor(x, dtype=torch.float32)
        norm = self.card.normalization
        if norm is not None:
            n = Normalizer.from_dict(norm)
            t = (t - n.mean) / n.std
        with torch.no_grad():
            return self.model(t)


class Registry:
    """Writes model artifacts and registry rows straight into a test's data dir."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions = make_sessionmaker(make_engine(settings.resolved_database_url))

    def job(
        self, name: str, status: JobStatus = JobStatus.succeeded, *, tenant: str = "default"
    ) -> str:
        with self.sessions() as s:
            job = job_store.create_job(s, {"name": name}, tenant=tenant, max_attempts=1)
            job.status = status.value
            s.commit()
            return job.id

    def add(
        self,
        name: str,
        *,
        input_shape: tuple[int, ...] = IMAGE_SHAPE,
        output: str = "softmax",
        out_dim: int = 3,
        hidden: tuple[int, ...] = (8,),
        seed: int = 0,
        normalized: bool = True,
        metrics: dict[str, Any] | None = None,
        feature_names: list[str] | None = None,
        arch: dict[str, Any] | None = None,
        tenant: str = "default",
    ) -> Registered:
        torch.manual_seed(seed)
        spec = ModelSpec.model_validate(arch or {"arch": "mlp", "hidden": list(hidden)})
        model = build_model(spec, input_shape, out_dim).eval()
        norm = None
        if normalized:
            if len(input_shape) == 3:
                norm = Normalizer(
                    torch.full((input_shape[0], 1, 1), 0.4),
                    torch.full((input_shape[0], 1, 1), 0.3),
                    "per_channel",
                ).to_dict()
            else:
                norm = Normalizer(
                    torch.linspace(-1, 1, input_shape[0]),
                    torch.linspace(0.5, 2, input_shape[0]),
                    "per_feature",
                ).to_dict()
        classes = output != "identity"
        card = ModelCard(
            arch=spec.model_dump(mode="json"),
            input_shape=list(input_shape),
            task="classification" if classes else "regression",
            output=output,  # type: ignore[arg-type]
            out_dim=out_dim,
            num_classes=max(out_dim, 2) if classes else None,
            class_names=[f"c{i}" for i in range(max(out_dim, 2))] if classes else None,
            feature_names=feature_names,
            normalization=norm,
            metrics=metrics or {"val_accuracy": 0.5 + seed / 100},
        )
        job_id = self.job(name, tenant=tenant)
        model_dir = self.settings.resolved_artifact_dir / job_id / "model"
        card = save_model(model_dir, model, card)
        with self.sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None
            mv = registry_store.register_model(
                s, job, str(model_dir), card.model_dump(mode="json"), card.metrics
            )
            s.commit()
            return Registered(name, mv.version, job_id, str(model_dir), model, card)
