"""The study routes of API v1: hyperparameter searches whose trials are jobs."""

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from api.auth.deps import TenantDep
from api.core.deps import SessionDep, SettingsDep, wake_scheduler
from api.core.models import StudyStatus
from api.core.submissions import request_hash
from api.studies.deps import StudyDep
from api.studies.events import EVENT_DATA, StreamState, study_events_description, study_events_since
from api.studies.ledger import cancel_study, create_study
from api.studies.reads import leaderboard, studies_page, study_trials, study_view
from api.studies.schemas import StudyList, StudyPublic, TrialList
from api.studies.warm_start import warm_start_trials
from api.web.problem_docs import problem_responses
from api.web.sse import event_stream, event_stream_response
from shared.study_checks import admit_study
from shared.study_spec import StudySpec

router = APIRouter(prefix="/v1/studies", tags=["studies"])


@router.post(
    "",
    operation_id="submit_study",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyPublic,
    responses={
        200: {"model": StudyPublic, "description": "Idempotent replay"},
        **problem_responses(409),
    },
)
def submit_study(
    spec: StudySpec,
    request: Request,
    response: Response,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> StudyPublic:
    """Validate a study, store it, and start scheduling its trials."""
    body_hash = request_hash(spec.model_dump(mode="json"))
    stored = admit_study(spec, settings)
    study, created = create_study(
        session,
        tenant.id,
        stored,
        idempotency_key,
        body_hash,
        settings.max_active_studies,
        warm_trials=warm_start_trials(session, tenant.id, stored),
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    else:
        wake_scheduler(request)
    return study_view(session, study)


@router.get("", operation_id="list_studies", response_model=StudyList)
def list_studies(
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[StudyStatus | None, Query()] = None,
) -> StudyList:
    """The tenant's studies, newest first."""
    return studies_page(session, tenant.id, limit, cursor, status)


@router.get("/{study_id}", operation_id="get_study", response_model=StudyPublic)
def get_study(study: StudyDep, session: SessionDep) -> StudyPublic:
    """One study: its trials counted by state, the best trial (or the front of a study of
    several objectives), importances, confirmations."""
    return study_view(session, study)


@router.get("/{study_id}/trials", operation_id="list_trials", response_model=TrialList)
def list_trials(
    study: StudyDep,
    session: SessionDep,
    order: Annotated[Literal["number", "value", "pareto"], Query()] = "number",
) -> TrialList:
    """The leaderboard: every trial with its state, parameters and values; `order=value`
    puts the best first (by the first objective), `order=pareto` the front first."""
    return leaderboard(study, study_trials(session, study), order)


@router.get(
    "/{study_id}/events",
    operation_id="study_events",
    response_class=StreamingResponse,
    responses=event_stream_response(study_events_description(), EVENT_DATA),
)
async def stream_study_events(
    study: StudyDep, request: Request, settings: SettingsDep
) -> StreamingResponse:
    """Server-Sent Events: each trial queued, started, its epochs, pruned or finished, then
    the study's end."""
    engine, study_id, sent = request.app.state.engine, study.id, StreamState()
    return event_stream(
        request,
        study.tenant_id,
        lambda: study_events_since(engine, study_id, sent),
        settings.events_keepalive_seconds,
        settings.max_streams_per_tenant,
    )


@router.post(
    "/{study_id}/cancel",
    operation_id="cancel_study",
    response_model=StudyPublic,
    responses=problem_responses(409),
)
def cancel(study: StudyDep, session: SessionDep) -> StudyPublic:
    """Cancel every queued and running trial; no new trial starts."""
    return study_view(session, cancel_study(session, study))
