"""Alembic environment: Kiln always hands in an open connection (see kiln.schema)."""

from alembic import context

from kiln.schema import include_name, target_metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=target_metadata(),
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    include_name=include_name,
)
with context.begin_transaction():
    context.run_migrations()
