"""lifecycle: preemptions apart from attempts, an attempt log, tags, the workers table

`claims` is the fencing token: it goes up on every claim (a preempted job claimed again included),
so a stale owner is fenced out and each run's stages are kept apart. `attempts` now counts only the
runs that count against `max_attempts` (a preemption does not); `preemptions` counts those apart.
`attempt_log` says what happened to each run (preempted, killed by a signal, lease expired, raised),
so a job that exhausted its attempts can say why. `workers` is what each live worker can run.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 19:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from sqlalchemy.dialects import postgresql

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claims', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('preemptions', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('attempt_log', JSON, nullable=True))
        batch_op.add_column(sa.Column('tags', JSON, nullable=True))
    # Every claim so far counted as an attempt.
    op.execute('UPDATE jobs SET claims = attempts')

    op.create_table('workers',
    sa.Column('id', sa.String(length=255), nullable=False),
    sa.Column('hostname', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('queues', JSON, nullable=False),
    sa.Column('devices', JSON, nullable=False),
    sa.Column('capacity', JSON, nullable=False),
    sa.Column('concurrency', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade() -> None:
    op.drop_table('workers')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('tags')
        batch_op.drop_column('attempt_log')
        batch_op.drop_column('preemptions')
        batch_op.drop_column('claims')
