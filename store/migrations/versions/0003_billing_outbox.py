"""billing outbox and worker heartbeat: sessions.billed_at, sessions.heartbeat_at

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 01:20:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('billed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
    # Sessions already priced count as billed; ended sessions without costs are billed by the
    # next reconciliation.
    op.execute(
        "UPDATE sessions SET billed_at = (SELECT max(session_costs.computed_at) FROM session_costs"
        " WHERE session_costs.session_id = sessions.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('billed_at')
