"""job metric blocks: the rollup of each job's step rows that charts read

Per job, level and start: the min, max and last value of each numeric key over 2**level
consecutive step rows (positions start..stop-1 in training order). Written with the rows; this
migration builds them for the jobs that already have step rows, a job at a time in bounded
chunks, with the same code the writer uses. Deleted with the job.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 08:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('job_metric_blocks',
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('level', sa.Integer(), nullable=False),
    sa.Column('start', sa.Integer(), nullable=False),
    sa.Column('stop', sa.Integer(), nullable=False),
    sa.Column('first_epoch', sa.Integer(), nullable=False),
    sa.Column('first_step', sa.Integer(), nullable=False),
    sa.Column('last_epoch', sa.Integer(), nullable=False),
    sa.Column('last_step', sa.Integer(), nullable=False),
    sa.Column('stats', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'level', 'start')
    )
    # The backfill runs the writer's own code: the blocks must be exactly what it would have
    # written, and one implementation cannot drift from another.
    from tas.store import metric_rollup

    session = Session(bind=op.get_bind())
    jobs = session.scalars(
        sa.text('SELECT DISTINCT job_id FROM job_metrics WHERE step >= 0')
    ).all()
    for job_id in jobs:
        metric_rollup.extend(session, job_id)
        session.flush()
        session.expunge_all()


def downgrade() -> None:
    op.drop_table('job_metric_blocks')
