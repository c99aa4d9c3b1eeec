from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import PredictorsDep, SessionDep, TenantDep
from app.schemas.predict import ModelRef, PredictRequest, PredictResponse
from app.services.inputs import to_batch
from app.services.predictors import resolve

router = APIRouter(tags=["predict"])


@router.post("/predict", response_model=PredictResponse)
def predict(
    req: PredictRequest, session: SessionDep, tenant: TenantDep, predictors: PredictorsDep
) -> PredictResponse:
    """Predictions from a trained model, with the model's own preprocessing applied."""
    mv = resolve(session, req.model, tenant=tenant)
    predictor = predictors.get(mv.model_dir)
    batch = to_batch(req.inputs, predictor)
    return PredictResponse(
        model=ModelRef(name=mv.name, version=mv.version, job_id=mv.job_id),
        predictions=predictor.predict(batch),
    )
