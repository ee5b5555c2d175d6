"""Alembic environment for the state store.

`syncengine.state.store` runs migrations programmatically: it builds an
`alembic.config.Config` whose `script_location` is this package directory and passes an
open SQLAlchemy connection, already inside a locked transaction, in
`config.attributes["connection"]`. For developers running `alembic` by hand (for example
`alembic revision --autogenerate`), a `sqlalchemy.url` main option is used instead.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from syncengine.state.schema import metadata


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    config = context.config
    if context.is_offline_mode():
        context.configure(
            url=config.get_main_option("sqlalchemy.url"),
            target_metadata=metadata,
            literal_binds=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if isinstance(connection, sa.Connection):
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection given and no sqlalchemy.url configured")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


_main()
