"""studies and trials

Revision ID: 3a63ba9fcbf6
Revises: b916840b3421
Create Date: 2026-12-01 21:31:29.039967
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '3a63ba9fcbf6'
down_revision: str | None = 'b916840b3421'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('scheduler_leases',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('holder', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_scheduler_leases'))
    )
    op.create_table('studies',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('tenant_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sa.JSON(), nullable=True),
    sa.Column('sampler_state', sa.JSON(), nullable=False),
    sa.Column('importances', sa.JSON(), nullable=True),
    sa.Column('importances_trials', sa.Integer(), server_default='0', nullable=False),
    sa.Column('idempotency_key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('request_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_studies_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_studies')),
    sa.UniqueConstraint('tenant_id', 'idempotency_key', name=op.f('uq_studies_tenant_id'))
    )
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_studies_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('trials',
    sa.Column('study_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('job_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True),
    sa.Column('confirms', sa.Integer(), nullable=True),
    sa.Column('system_attrs', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_trials_job_id_jobs')),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], name=op.f('fk_trials_study_id_studies')),
    sa.PrimaryKeyConstraint('study_id', 'number', name=op.f('pk_trials')),
    sa.UniqueConstraint('job_id', name=op.f('uq_trials_job_id'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('study_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))
        batch_op.add_column(sa.Column('trial', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('pruned_reason', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_study_id'), ['study_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_jobs_study_id_studies'), 'studies', ['study_id'], ['id'])



def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_jobs_study_id_studies'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_jobs_study_id'))
        batch_op.drop_column('pruned_reason')
        batch_op.drop_column('trial')
        batch_op.drop_column('study_id')

    op.drop_table('trials')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_studies_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_studies_status'))

    op.drop_table('studies')
    op.drop_table('scheduler_leases')
