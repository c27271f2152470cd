import json
import signal
from pathlib import Path

import pytest

# --- the order the tests start in -------------------------------------------------------------------------------
# On 2 cores the suite takes as long as its busiest xdist worker: the longest tests go first, handed out one at a
# time (xdist's `--maxschedchunk=1`, unless given: each worker takes the next when it is free, where by default the
# first quarter of the list would go to the first worker), which leaves the short ones to fill the end. A test's
# weight is its duration in this checkout's last run (the pytest cache), else in tests/durations.json (committed, so
# that a fresh clone, as CI's, orders its first run too), else a guess from what it sets up.
# `python3 -m pytest -q -n 4 --update-durations` rewrites tests/durations.json from the run's own figures.
_DURATIONS_KEY = "dstack/durations"
DURATIONS_FILE = Path(__file__).resolve().parent / "durations.json"
_GUESSED_SECONDS = {"cloudsim": 20.0, "make_host": 12.0, "docker_daemon": 8.0, "postgres_cluster": 4.0}


def pytest_addoption(parser):
    parser.addoption("--update-durations", action="store_true",
                     help="write each test's duration in this run (setup, call and teardown) to tests/durations.json, "
                          "which orders the tests of a checkout that has no pytest cache")


def pytest_configure(config):
    if getattr(config.option, "maxschedchunk", 0) is None:  # pytest-xdist's option, not given
        config.option.maxschedchunk = 1
    # A suite started in the background of a script (`cmd &` without job control, nohup) inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt for it: the Ctrl-C tests would wait forever on an engine that no
    # SIGINT stops (in-process) or a `dstack attach` that ignores it (their children inherit the ignoring).
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _guess(item) -> float:
    return max([_GUESSED_SECONDS.get(name, 0.5) for name in getattr(item, "fixturenames", ())] or [0.5])


def committed_durations() -> dict:
    """tests/durations.json: {test id: seconds}; empty where it is missing or unreadable (the guesses then order)."""
    try:
        return dict(json.loads(DURATIONS_FILE.read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def pytest_collection_modifyitems(config, items):
    cached = config.cache.get(_DURATIONS_KEY, {}) if getattr(config, "cache", None) else {}
    known = {**committed_durations(), **cached}
    order = {item.nodeid: index for index, item in enumerate(items)}
    items.sort(key=lambda item: (-known.get(item.nodeid, _guess(item)), order[item.nodeid]))


_durations: dict = {}


def pytest_runtest_logreport(report):
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration  # setup, call, teardown


def pytest_sessionfinish(session):
    if not _durations or hasattr(session.config, "workerinput"):  # an xdist worker: its controller records them
        return
    cache = getattr(session.config, "cache", None)
    if cache is not None:
        cache.set(_DURATIONS_KEY, {**cache.get(_DURATIONS_KEY, {}), **_durations})
    if session.config.getoption("update_durations"):
        write_durations(_durations)


def write_durations(measured: dict) -> None:
    """Merges `measured` into tests/durations.json (tenths of a second, one test a line, sorted by id); tests whose
    file is gone are dropped."""
    root = DURATIONS_FILE.parent.parent
    merged = {**committed_durations(), **{test: round(seconds, 1) for test, seconds in measured.items()}}
    kept = {test: merged[test] for test in sorted(merged) if (root / test.split("::")[0]).exists()}
    DURATIONS_FILE.write_text("{\n" + ",\n".join(f"{json.dumps(test)}: {seconds}" for test, seconds in kept.items())
                              + "\n}\n")


@pytest.fixture
def home_env(dstack_home):
    """The environment that points a `dstack` subprocess at the test's own $DSTACK_HOME."""
    return {"DSTACK_HOME": str(dstack_home)}


@pytest.fixture(autouse=True)
def dstack_home(tmp_path, monkeypatch):
    """Every test gets its own $DSTACK_HOME: nothing reads or writes the user's ~/.dstack (nor a team database the
    environment names: tests/postgres_cluster.py's fixtures give the tests that want one their own)."""
    home = tmp_path / "dstack-home"
    monkeypatch.setenv("DSTACK_HOME", str(home))
    for team_setting in ("DSTACK_DATABASE_URL", "DSTACK_TEAM_KEY", "DSTACK_USER"):  # a team database: opt-in only
        monkeypatch.delenv(team_setting, raising=False)
    return home


@pytest.fixture(scope="session")
def client_key(tmp_path_factory):
    """An ed25519 key pair for the test hosts' authorized_keys: (private key path, public key line)."""
    import subprocess

    folder = tmp_path_factory.mktemp("client-key")
    path = folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dstack-tests", "-f", str(path)], check=True)
    return str(path), (folder / "id_ed25519.pub").read_text().strip()


@pytest.fixture
def make_host(client_key):
    """Starts namespace hosts with sshd; all are removed after the test."""
    from tests.netns_hosts import NamespaceHost, require_namespaces

    require_namespaces()
    started = []

    def make(index=None, login_user=None):
        host = NamespaceHost(client_key[1], index, login_user)
        started.append(host)
        try:
            return host.start()
        except BaseException:
            host.cleanup()
            started.remove(host)
            raise

    yield make
    for host in started:
        host.cleanup()


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real moto server on 127.0.0.1 (EC2 works there; the Pricing API does not)."""
    from moto.server import ThreadedMotoServer

    from tests.moto_placement_groups import install

    install()  # the server runs in this process: it answers the placement group calls moto lacks
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_on_moto(monkeypatch, moto_endpoint):
    """boto3 talks to the local moto server (every service), with test credentials and no instance metadata."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return moto_endpoint


@pytest.fixture
def no_aws_credentials(monkeypatch, tmp_path):
    """No AWS credentials anywhere boto3 looks: environment, config files, instance metadata."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def recorded_api():
    """A cloud API stand-in on 127.0.0.1 (tests.recorded_http)."""
    import threading

    from tests.recorded_http import RecordedApi

    api = RecordedApi()
    thread = threading.Thread(target=api.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield api
    api.server.shutdown()
    api.server.server_close()


from tests.cloudsim.fixtures import cloudsim, cloudsim_zygote  # noqa: E402,F401 (the simulated cloud's fixtures)


@pytest.fixture(scope="session")
def postgres_cluster():
    """One PostgreSQL cluster for this session (xdist worker), on a Unix socket (tests/postgres_cluster.py)."""
    from tests.postgres_cluster import Cluster

    cluster = Cluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def team_database(postgres_cluster, monkeypatch):
    """A fresh team database, which the store (and each `dstack` the test runs) uses: its URL."""
    url = postgres_cluster.new_database()
    monkeypatch.setenv("DSTACK_DATABASE_URL", url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_engine(request):
    """Runs the test against both engines: this home's SQLite store, then a fresh team database."""
    if request.param == "postgresql":
        request.getfixturevalue("team_database")
    return request.param
