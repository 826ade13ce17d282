"""Attendance (issue 22): school rosters, classes' home rooms, corrections, settings and reduced counts.

Revision ID: 0014
Revises: 0013 (schedule anchors)
Create Date: 2026-12-05

`roster_people` (central/attendance.py `RosterPerson`): name, class and role of each person of a school, with
the pseudonyms of their card and QR code (never a number or a code). `attendance_class_rooms`: each class's
home room. `attendance_marks`: teachers' corrections. `attendance_settings`: a school's grace and retention.
`attendance_counts`: a class's day once its named entries passed the retention. All start empty.

And the QR check-ins older agents sent with the printed code in clear (`{"code": "STU-101-0001"}`: an
identifier of a minor) are deleted from the events: no register can use them (the roster keeps pseudonyms
only) and central must not keep what the gateway now never sends (issue 22; contract ATTENDANCE_FIELDS).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _forget_raw_check_ins()
    op.create_table(
        "roster_people",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("school_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("class_name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("card", sa.String(length=64), nullable=True),
        sa.Column("qr", sa.String(length=64), nullable=True),
        sa.Column("added", sa.Float(), nullable=False),
        sa.Column("added_by", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["school_id"], ["schools.id"], name=op.f("fk_roster_people_school_id_schools")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_roster_people")),
        sa.UniqueConstraint("school_id", "card", name="uq_roster_people_card"),
        sa.UniqueConstraint("school_id", "qr", name="uq_roster_people_qr"),
    )
    op.create_index(op.f("ix_roster_people_school_id"), "roster_people", ["school_id"], unique=False)
    op.create_table(
        "attendance_class_rooms",
        sa.Column("school_id", sa.String(length=64), nullable=False),
        sa.Column("class_name", sa.String(length=64), nullable=False),
        sa.Column("room_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["room_id"], ["rooms.id"], name=op.f("fk_attendance_class_rooms_room_id_rooms")),
        sa.ForeignKeyConstraint(["school_id"], ["schools.id"],
                                name=op.f("fk_attendance_class_rooms_school_id_schools")),
        sa.PrimaryKeyConstraint("school_id", "class_name", name=op.f("pk_attendance_class_rooms")),
    )
    op.create_index(op.f("ix_attendance_class_rooms_room_id"), "attendance_class_rooms", ["room_id"], unique=False)
    op.create_table(
        "attendance_marks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("room_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("period", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("by", sa.String(length=64), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["person_id"], ["roster_people.id"], ondelete="CASCADE",
                                name=op.f("fk_attendance_marks_person_id_roster_people")),
        sa.ForeignKeyConstraint(["room_id"], ["rooms.id"], name=op.f("fk_attendance_marks_room_id_rooms")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attendance_marks")),
        sa.UniqueConstraint("room_id", "day", "period", "person_id", name="uq_attendance_marks_entry"),
    )
    op.create_index(op.f("ix_attendance_marks_room_id"), "attendance_marks", ["room_id"], unique=False)
    op.create_table(
        "attendance_settings",
        sa.Column("school_id", sa.String(length=64), nullable=False),
        sa.Column("grace_min", sa.Integer(), nullable=False),
        sa.Column("retention_days", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["school_id"], ["schools.id"], name=op.f("fk_attendance_settings_school_id_schools")),
        sa.PrimaryKeyConstraint("school_id", name=op.f("pk_attendance_settings")),
    )
    op.create_table(
        "attendance_counts",
        sa.Column("school_id", sa.String(length=64), nullable=False),
        sa.Column("class_name", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("expected", sa.Integer(), nullable=False),
        sa.Column("present", sa.Integer(), nullable=False),
        sa.Column("late", sa.Integer(), nullable=False),
        sa.Column("absent", sa.Integer(), nullable=False),
        sa.Column("excused", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["school_id"], ["schools.id"], name=op.f("fk_attendance_counts_school_id_schools")),
        sa.PrimaryKeyConstraint("school_id", "class_name", "day", name=op.f("pk_attendance_counts")),
    )


def _forget_raw_check_ins() -> None:
    events = sa.table("events", sa.column("type", sa.String), sa.column("data", sa.Text))
    # The ledger writes data with json.dumps (`{"code": "…"}`); a raw code is a "code" key. LIKE keeps
    # this one statement on either engine; what it finds is only ever an attendance event.
    op.execute(events.delete().where(events.c.type == "attendance", events.c.data.like('%"code":%')))


def downgrade() -> None:
    op.drop_table("attendance_counts")
    op.drop_table("attendance_settings")
    op.drop_index(op.f("ix_attendance_marks_room_id"), table_name="attendance_marks")
    op.drop_table("attendance_marks")
    op.drop_index(op.f("ix_attendance_class_rooms_room_id"), table_name="attendance_class_rooms")
    op.drop_table("attendance_class_rooms")
    op.drop_index(op.f("ix_roster_people_school_id"), table_name="roster_people")
    op.drop_table("roster_people")
