import pytest


@pytest.fixture(autouse=True)
def dstack_home(tmp_path, monkeypatch):
    """Every test gets its own $DSTACK_HOME: nothing reads or writes the user's ~/.dstack."""
    home = tmp_path / "dstack-home"
    monkeypatch.setenv("DSTACK_HOME", str(home))
    return home
