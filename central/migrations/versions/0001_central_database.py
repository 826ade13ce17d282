"""The central database: registry, ledger and provisioning tables (made or adopted).

Revision ID: 0001
Revises:
Create Date: 2026-12-05

A new database gets every table. A database made before migrations (releases up to stop 23: SQLite,
each program creating its tables and adding columns as it went) is adopted: tables it lacks are
made, columns it lacks are added (with their defaults), the events table of the oldest files is
re-keyed by (gateway, seq, ts), and the gateways' stored state is copied into the columns the ledger
now decides by (state_ts, state_since, state_online). Not a row is lost (tests/test_migrations.py
upgrades a file made by stop 23 and counts them).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _existing() -> set[str]:
    return set(sa.inspect(op.get_bind()).get_table_names())


def _table(name: str, *items: sa.SchemaItem, **kw: object) -> None:
    """Create the table, or add to an existing one the columns it lacks."""
    if name not in _EXISTING:
        op.create_table(name, *items, **kw)
        return
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(name)}
    for column in items:
        if isinstance(column, sa.Column) and column.name not in have:
            op.add_column(name, column)


def _index(table: str, name: str, columns: list[str], **kw: object) -> None:
    if table in _EXISTING and name in {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(table)}:
        return
    op.create_index(name, table, columns, **kw)


_EXISTING: set[str] = set()


def upgrade() -> None:
    _EXISTING.clear()
    _EXISTING.update(_existing())
    _table('alarm_rules',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alarm_rules'))
    )
    _table('audit',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('user', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('ok', sa.Boolean(), nullable=False),
    sa.Column('remote', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit'))
    )
    _index('audit', op.f('ix_audit_ts'), ['ts'], unique=False)

    _table('commands',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('gateway', sa.String(length=200), nullable=False),
    sa.Column('device', sa.String(length=200), nullable=False),
    sa.Column('action', sa.String(length=200), nullable=False),
    sa.Column('params', sa.Text(), nullable=False),
    sa.Column('by', sa.String(length=200), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('deadline', sa.Float(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.Text(), server_default='', nullable=False),
    sa.Column('finished', sa.Float(), nullable=True),
    sa.Column('published', sa.Float(), nullable=True),
    sa.Column('published_since', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_commands'))
    )
    _index('commands', 'commands_created', ['created'], unique=False)
    _index('commands', 'commands_pending', ['deadline'], unique=False, sqlite_where=sa.text("status = 'pending'"), postgresql_where=sa.text("status = 'pending'"))

    _table('config_push_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('by', sa.String(length=64), nullable=False),
    sa.Column('started', sa.Float(), nullable=False),
    sa.Column('finished', sa.Float(), nullable=True),
    sa.Column('wanted', sa.Integer(), nullable=False),
    sa.Column('pushed', sa.JSON(), nullable=False),
    sa.Column('failed', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_config_push_runs'))
    )
    _table('config_pushes',
    sa.Column('gateway_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('pushed_at', sa.Float(), nullable=False),
    sa.Column('pushed_by', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('gateway_id', name=op.f('pk_config_pushes'))
    )
    _table('events', *_events_columns())
    _index('events', 'events_ts', ['ts'], unique=False)

    _table('gateways',
    sa.Column('id', sa.String(length=200), nullable=False),
    sa.Column('school', sa.String(length=200), nullable=False),
    sa.Column('room', sa.String(length=200), server_default='', nullable=False),
    sa.Column('online', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('state', sa.Text(), server_default='{}', nullable=False),
    sa.Column('interval', sa.Float(), server_default='0', nullable=False),
    sa.Column('last_seen', sa.Float(), nullable=True),
    sa.Column('first_seq', sa.BigInteger(), nullable=True),
    sa.Column('max_seq', sa.BigInteger(), nullable=True),
    sa.Column('received', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('duplicates', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('seq_floor', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('outbox_instance', sa.BigInteger(), nullable=True),
    sa.Column('gaps_before', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('received_before', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('epoch', sa.Integer(), server_default='0', nullable=False),
    sa.Column('seq_jumps', sa.Integer(), server_default='0', nullable=False),
    sa.Column('clock_ahead', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('clock_offset', sa.Float(), nullable=True),
    sa.Column('acked_seq', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('outbox_oldest', sa.BigInteger(), nullable=True),
    sa.Column('ack_sent', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('ack_sent_at', sa.Float(), server_default='0', nullable=False),
    sa.Column('ack_due', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('state_ts', sa.Float(), server_default='0', nullable=False),
    sa.Column('state_since', sa.Float(), nullable=True),
    sa.Column('state_online', sa.Boolean(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_gateways'))
    )
    _table('ingest_workers',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('started', sa.Float(), nullable=False),
    sa.Column('updated', sa.Float(), nullable=False),
    sa.Column('stats', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_ingest_workers'))
    )
    _table('latest',
    sa.Column('gateway', sa.String(length=200), nullable=False),
    sa.Column('device', sa.String(length=200), nullable=False),
    sa.Column('metric', sa.String(length=200), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('epoch', sa.Integer(), server_default='0', nullable=False),
    sa.Column('seq', sa.BigInteger(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('gateway', 'device', 'metric', name=op.f('pk_latest')),
    sqlite_with_rowid=False
    )
    _table('leases',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('holder', sa.String(length=255), nullable=False),
    sa.Column('until', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_leases'))
    )
    _table('schools',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_schools'))
    )
    _table('seen',
    sa.Column('gateway', sa.String(length=200), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('gateway', 'seq', name=op.f('pk_seen')),
    sqlite_with_rowid=False
    )
    _table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=300), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('username', name=op.f('uq_users_username'))
    )
    _table('web_sessions',
    sa.Column('id_sha256', sa.String(length=64), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=True),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('seen', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id_sha256', name=op.f('pk_web_sessions'))
    )
    _index('web_sessions', op.f('ix_web_sessions_seen'), ['seen'], unique=False)
    _index('web_sessions', op.f('ix_web_sessions_username'), ['username'], unique=False)

    _table('alarms',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rule_id', sa.Integer(), nullable=False),
    sa.Column('gateway', sa.String(length=64), nullable=False),
    sa.Column('device', sa.String(length=64), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('value', sa.String(length=100), nullable=False),
    sa.Column('raised_at', sa.Float(), nullable=False),
    sa.Column('acked_by', sa.String(length=64), nullable=True),
    sa.Column('acked_at', sa.Float(), nullable=True),
    sa.Column('cleared_at', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['rule_id'], ['alarm_rules.id'], name=op.f('fk_alarms_rule_id_alarm_rules')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alarms'))
    )
    _table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_api_tokens_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('token_sha256', name=op.f('uq_api_tokens_token_sha256'))
    )
    _table('buildings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('school_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.ForeignKeyConstraint(['school_id'], ['schools.id'], name=op.f('fk_buildings_school_id_schools')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_buildings')),
    sa.UniqueConstraint('school_id', 'name', name=op.f('uq_buildings_school_id'))
    )
    _table('school_secrets',
    sa.Column('school_id', sa.String(length=64), nullable=False),
    sa.Column('card_secret', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['school_id'], ['schools.id'], name=op.f('fk_school_secrets_school_id_schools')),
    sa.PrimaryKeyConstraint('school_id', name=op.f('pk_school_secrets'))
    )
    _table('rooms',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('school_id', sa.String(length=64), nullable=False),
    sa.Column('building_id', sa.Integer(), nullable=True),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['building_id'], ['buildings.id'], name=op.f('fk_rooms_building_id_buildings')),
    sa.ForeignKeyConstraint(['school_id'], ['schools.id'], name=op.f('fk_rooms_school_id_schools')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rooms')),
    sa.UniqueConstraint('school_id', 'name', name=op.f('uq_rooms_school_id'))
    )
    _table('schedules',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('school_id', sa.String(length=64), nullable=True),
    sa.Column('building_id', sa.Integer(), nullable=True),
    sa.Column('at', sa.String(length=5), nullable=False),
    sa.Column('days', sa.String(length=32), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('kinds', sa.String(length=64), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('last_run', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['building_id'], ['buildings.id'], name=op.f('fk_schedules_building_id_buildings')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_schedules'))
    )
    _table('registered_gateways',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('school_id', sa.String(length=64), nullable=False),
    sa.Column('room_id', sa.Integer(), nullable=True),
    sa.Column('mqtt_username', sa.String(length=100), nullable=False),
    sa.Column('mqtt_password_hash', sa.String(length=300), nullable=False),
    sa.Column('config_version', sa.Integer(), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['room_id'], ['rooms.id'], name=op.f('fk_registered_gateways_room_id_rooms')),
    sa.ForeignKeyConstraint(['school_id'], ['schools.id'], name=op.f('fk_registered_gateways_school_id_schools')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_registered_gateways')),
    sa.UniqueConstraint('mqtt_username', name=op.f('uq_registered_gateways_mqtt_username'))
    )
    _table('schedule_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('schedule_id', sa.Integer(), nullable=False),
    sa.Column('ran_at', sa.Float(), nullable=False),
    sa.Column('results', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['schedule_id'], ['schedules.id'], name=op.f('fk_schedule_runs_schedule_id_schedules')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_schedule_runs'))
    )
    _table('user_rooms',
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('room_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['room_id'], ['rooms.id'], name=op.f('fk_user_rooms_room_id_rooms')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_user_rooms_user_id_users')),
    sa.PrimaryKeyConstraint('user_id', 'room_id', name=op.f('pk_user_rooms'))
    )
    _table('registered_devices',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('gateway_id', sa.String(length=64), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('profile', sa.String(length=64), nullable=False),
    sa.Column('address', sa.JSON(), nullable=False),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['gateway_id'], ['registered_gateways.id'], name=op.f('fk_registered_devices_gateway_id_registered_gateways')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_registered_devices')),
    sa.UniqueConstraint('gateway_id', 'device_id', name=op.f('uq_registered_devices_gateway_id'))
    )

    if _EXISTING and op.get_bind().dialect.name == "sqlite":  # every database made before migrations is SQLite
        _adopt_ledger(backfill="gateways" in _EXISTING)


def _adopt_ledger(backfill: bool) -> None:
    bind = op.get_bind()
    # The oldest files keyed events by (gateway, seq): a replaced outbox's new events (seq from 1 again)
    # would have been taken for redeliveries. SQLite cannot change a key: copy the table.
    events_sql = "events" in _EXISTING and bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'events'").scalar()
    if events_sql and "PRIMARY KEY (gateway, seq, ts)" not in events_sql and "pk_events" not in events_sql:
        op.execute("ALTER TABLE events RENAME TO events_before_rekey")
        op.execute("DROP INDEX IF EXISTS events_ts")
        op.create_table("events", *_events_columns())
        op.create_index("events_ts", "events", ["ts"])
        op.execute("INSERT OR IGNORE INTO events SELECT gateway, device, seq, ts, type, data FROM events_before_rekey")
        op.drop_table("events_before_rekey")
    if backfill:
        op.execute("UPDATE gateways SET state_ts = COALESCE(json_extract(state, '$.ts'), 0),"
                   " state_since = json_extract(state, '$.since'), state_online = json_extract(state, '$.online')"
                   " WHERE json_valid(state)")


def _events_columns() -> list[sa.SchemaItem]:
    return [
        sa.Column('gateway', sa.String(length=200), nullable=False),
        sa.Column('device', sa.String(length=200), nullable=False),
        sa.Column('seq', sa.BigInteger(), nullable=False),
        sa.Column('ts', sa.Float(), nullable=False),
        sa.Column('type', sa.String(length=200), nullable=False),
        sa.Column('data', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('gateway', 'seq', 'ts', name=op.f('pk_events'))
    ]



def downgrade() -> None:
    op.drop_table('registered_devices')
    op.drop_table('user_rooms')
    op.drop_table('schedule_runs')
    op.drop_table('registered_gateways')
    op.drop_table('schedules')
    op.drop_table('rooms')
    op.drop_table('school_secrets')
    op.drop_table('buildings')
    op.drop_table('api_tokens')
    op.drop_table('alarms')
    with op.batch_alter_table('web_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_web_sessions_username'))
        batch_op.drop_index(batch_op.f('ix_web_sessions_seen'))

    op.drop_table('web_sessions')
    op.drop_table('users')
    op.drop_table('seen')
    op.drop_table('schools')
    op.drop_table('leases')
    op.drop_table('latest')
    op.drop_table('ingest_workers')
    op.drop_table('gateways')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('events_ts')

    op.drop_table('events')
    op.drop_table('config_pushes')
    op.drop_table('config_push_runs')
    with op.batch_alter_table('commands', schema=None) as batch_op:
        batch_op.drop_index('commands_pending', sqlite_where=sa.text("status = 'pending'"), postgresql_where=sa.text("status = 'pending'"))
        batch_op.drop_index('commands_created')

    op.drop_table('commands')
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_ts'))

    op.drop_table('audit')
    op.drop_table('alarm_rules')
