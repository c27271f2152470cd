import pytest


@pytest.fixture(autouse=True)
def dstack_home(tmp_path, monkeypatch):
    """Every test gets its own $DSTACK_HOME: nothing reads or writes the user's ~/.dstack."""
    home = tmp_path / "dstack-home"
    monkeypatch.setenv("DSTACK_HOME", str(home))
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

    def make(index=None):
        host = NamespaceHost(index if index is not None else 10 + len(started), client_key[1])
        started.append(host)
        return host.start()

    yield make
    for host in started:
        host.cleanup()


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real moto server on 127.0.0.1 (EC2 works there; the Pricing API does not)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
