from tests.core.conftest import fake, runtime_factory  # noqa: F401 (shared fixtures)
