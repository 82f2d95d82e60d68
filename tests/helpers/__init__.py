"""What the tests share: helpers (plain functions and classes), fixtures (registered for every
test by `pytest_plugins` in tests/conftest.py), fake drivers, constants and the waits."""
