"""The fixtures live in plugins under tests/fixtures/ (psycopg's fix_*.py layout): a test module
asks for a fixture by name and never imports it from another test module."""

pytest_plugins = [
    "tests.fixtures.env",
    "tests.fixtures.db",
    "tests.fixtures.bridge",
    "tests.fixtures.ollama",
    "tests.fixtures.pgbouncer",
]
