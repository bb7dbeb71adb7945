"""study warm trials; confirm.refit false on stored studies

A study stored before `confirm.refit` existed re-ran its configurations as the search
trained them; refit now defaults to true, so those studies are given `refit: false` to go
on as they were submitted.

Revision ID: 3f7a9c1e5b20
Revises: deb2c616608b
Create Date: 2026-12-04 19:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '3f7a9c1e5b20'
down_revision: str | None = 'deb2c616608b'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


studies = sa.table('studies', sa.column('id', sa.String), sa.column('spec', sa.JSON))


def _set_refit(refit: bool | None) -> None:
    """Gives every stored `confirm` this refit (None: takes the key away)."""
    bind = op.get_bind()
    for study_id, spec in bind.execute(sa.select(studies.c.id, studies.c.spec)).all():
        confirm = (spec or {}).get('confirm')
        if confirm is None:
            continue
        changed = {key: value for key, value in confirm.items() if key != 'refit'}
        if refit is not None:
            changed['refit'] = confirm.get('refit', refit)
        if changed != confirm:
            bind.execute(
                studies.update()
                .where(studies.c.id == study_id)
                .values(spec={**spec, 'confirm': changed})
            )


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('warm_trials', sa.JSON(), server_default='[]', nullable=False)
        )
    _set_refit(False)


def downgrade() -> None:
    _set_refit(None)
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('warm_trials')
