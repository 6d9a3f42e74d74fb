from tests.router.conftest import router, sims  # noqa: F401 - shared fixtures
