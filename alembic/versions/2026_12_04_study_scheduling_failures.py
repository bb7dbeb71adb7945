"""study scheduling failures

Revision ID: 9d4b6e21c7a3
Revises: 5c0e7d2a91b4
Create Date: 2026-12-04 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '9d4b6e21c7a3'
down_revision: str | None = '5c0e7d2a91b4'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('scheduling_failures', sa.Integer(), server_default='0', nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('scheduling_failures')
