"""The job a route names, loaded once for every route that needs one."""

from typing import Annotated

from fastapi import Depends

from api.auth.deps import TenantDep
from api.core.deps import SessionDep
from api.core.models import Job
from api.web.errors import JobNotFound


def tenant_job(job_id: str, session: SessionDep, tenant: TenantDep) -> Job:
    job = session.get(Job, job_id)
    # Another tenant's job is indistinguishable from one that does not exist.
    if job is None or job.tenant_id != tenant.id:
        raise JobNotFound(f"no job {job_id}")
    return job


JobDep = Annotated[Job, Depends(tenant_job)]
