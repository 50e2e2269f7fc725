"""Shared fixtures live in tests/support/ as pytest plugins, one file per real server."""

pytest_plugins = [
    "tests.support.http",
    "tests.support.db",
    "tests.support.smtp",
    "tests.support.imap",
    "tests.support.install",
]
