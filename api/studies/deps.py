"""The study a route names, loaded once for every route that needs one."""

from typing import Annotated

from fastapi import Depends

from api.auth.deps import TenantDep
from api.core.deps import SessionDep
from api.core.models import Study
from api.web.errors import StudyNotFound


def tenant_study(study_id: str, session: SessionDep, tenant: TenantDep) -> Study:
    study = session.get(Study, study_id)
    # Another tenant's study is indistinguishable from one that does not exist.
    if study is None or study.tenant_id != tenant.id:
        raise StudyNotFound(f"no study {study_id}")
    return study


StudyDep = Annotated[Study, Depends(tenant_study)]
