"""validation metrics

Revision ID: deb2c616608b
Revises: 9d4b6e21c7a3
Create Date: 2026-12-04 17:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = 'deb2c616608b'
down_revision: str | None = '9d4b6e21c7a3'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('epoch_metrics', schema=None) as batch_op:
        batch_op.add_column(sa.Column('val_loss', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('val_accuracy', sa.Float(), nullable=True))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('best_val_accuracy', sa.Float(), nullable=True))
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.add_column(sa.Column('val_accuracy', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.drop_column('val_accuracy')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('best_val_accuracy')
    with op.batch_alter_table('epoch_metrics', schema=None) as batch_op:
        batch_op.drop_column('val_accuracy')
        batch_op.drop_column('val_loss')
