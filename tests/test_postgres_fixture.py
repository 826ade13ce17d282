"""The PostgreSQL fixtures (tests/conftest.py, tests/servers.py) that central's tests stand on: a database
per test, a server of our own that a test can kill and restart, and passwords that are really checked.
"""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa

from tests.servers import PostgreSQL


def _user_tables(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        return sorted(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_an_empty_database_of_its_own(pg_url: str, run: int) -> None:
    # Both runs create the same table: if the fixture handed out one database twice, the second would see it.
    assert _user_tables(pg_url) == []
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE probe (n integer)"))
        conn.execute(sa.text("INSERT INTO probe VALUES (:n)"), {"n": run})
    engine.dispose()
    assert _user_tables(pg_url) == ["probe"]


def test_a_table_in_one_database_is_not_in_another(postgres_server: PostgreSQL, pg_url: str) -> None:
    other = postgres_server.create_database("t_fixture_other")
    try:
        engine = sa.create_engine(pg_url)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE only_here (n integer)"))
        engine.dispose()
        assert _user_tables(pg_url) == ["only_here"]
        assert _user_tables(other) == []
    finally:
        postgres_server.drop_database("t_fixture_other")


def test_it_is_our_own_server_on_loopback(postgres_server: PostgreSQL, pg_url: str) -> None:
    assert postgres_server.port != 5432
    with psycopg.connect(postgres_server.dsn()) as conn:
        assert conn.execute("SHOW data_directory").fetchone()[0] == str(postgres_server.data)
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == "127.0.0.1"
        assert conn.execute("SHOW password_encryption").fetchone()[0] == "scram-sha-256"


def test_kill_and_restart_keeps_committed_rows_only(postgres_server: PostgreSQL, pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE seqs (seq integer PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO seqs SELECT generate_series(1, 100)"))
    engine.dispose()
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    open_tx = psycopg.connect(dsn)
    open_tx.execute("INSERT INTO seqs VALUES (101)")  # never committed: the crash must lose it
    port = postgres_server.port

    postgres_server.kill()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2).close()
    postgres_server.restart()

    assert postgres_server.port == port
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*), max(seq) FROM seqs").fetchone() == (100, 100)
    open_tx.close()


def test_a_wrong_password_is_refused(postgres_server: PostgreSQL) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres_server.dsn(password="wrong"), connect_timeout=5)
    # No `trust` on the unix socket either: a login there without a password is refused too.
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(host=str(postgres_server.workdir), port=postgres_server.port, user="postgres",
                        dbname="postgres", connect_timeout=5)


def test_central_db_url_gives_each_engine_a_fresh_database(central_db_url: str, request: pytest.FixtureRequest) -> None:
    """SQLite: a file not made yet (programs make and upgrade it); PostgreSQL: a database of this test at
    the release's schema (what `campus db upgrade` leaves), holding no row yet."""
    engine = sa.create_engine(central_db_url)
    try:
        assert engine.dialect.name == request.node.callspec.params["central_db_url"]
        tables = sa.inspect(engine).get_table_names()
        if engine.dialect.name == "sqlite":
            assert tables == []
        else:
            assert "alembic_version" in tables and "gateways" in tables
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT COUNT(*) FROM gateways")).scalar() == 0
    finally:
        engine.dispose()
