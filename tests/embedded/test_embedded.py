"""Embedded services on real processes: shared per home, persistent, healthy, stopped without leftovers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import redis

from comfyflow.embedded import ServiceURLs, ensure_services, stop_services
from comfyflow.embedded.postgres import ensure_postgres, postgres_pid, stop_postgres
from comfyflow.embedded.prefect import ensure_prefect, prefect_pid
from comfyflow.embedded.redis import ensure_redis, redis_pid, stop_redis
from comfyflow.embedded.supervisor import free_port, pid_alive, read_state
from comfyflow.settings import Settings

SERVICES_IN_CHILD = """
import asyncio, json, sys
from pathlib import Path
from comfyflow.embedded import ensure_services
from comfyflow.settings import Settings
home, port = Path(sys.argv[1]), int(sys.argv[2])
settings = Settings(home=home, prefect_port=port, redis_url=None, prefect_api_url=None)
print(json.dumps(asyncio.run(ensure_services(settings)).__dict__))
"""

ENSURE_IN_CHILD = """
import json, sys
from pathlib import Path
from comfyflow.embedded.redis import ensure_redis, redis_pid
home = Path(sys.argv[1])
url = ensure_redis(home)
print(json.dumps({"url": url, "pid": redis_pid(home)}))
"""


@pytest.fixture
def home() -> Iterator[Path]:
    # Not under tmp_path: every pytest session resets /tmp/pytest-of-<user> to 0700, which would cut the
    # embedded PostgreSQL (an unprivileged user when tests run as root) off from its data folder.
    folder = Path(tempfile.mkdtemp(prefix="comfyflow-embedded-")) / "home"
    folder.mkdir()
    yield folder
    pids = [read_state(folder / name).get("pid") for name in ("redis", "prefect")] + [postgres_pid(folder)]
    stop_services(folder)
    assert not [pid for pid in pids if pid_alive(pid)]
    assert _processes_mentioning(folder) == []
    shutil.rmtree(folder.parent)


def _processes_mentioning(folder: Path) -> list[int]:
    """Pids (not zombies) whose command line names the folder: what a clean stop must leave at zero."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(folder) in cmdline and pid_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def _settings(home: Path, **overrides) -> Settings:
    values = {"home": home, "redis_url": None, "prefect_api_url": None, "prefect_enabled": True}
    return Settings(**{**values, **overrides})


def test_processes_with_one_home_share_one_redis(home: Path) -> None:
    children = [
        subprocess.Popen([sys.executable, "-c", ENSURE_IN_CHILD, str(home)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    answers = [json.loads(child.communicate(timeout=60)[0]) for child in children]
    assert answers[0] == answers[1]
    assert answers[0]["pid"] == redis_pid(home) and pid_alive(answers[0]["pid"])
    started = time.perf_counter()
    assert ensure_redis(home) == answers[0]["url"]
    assert time.perf_counter() - started < 0.1


def test_redis_data_persists_across_stop_and_start(home: Path) -> None:
    url = ensure_redis(home)
    assert url.startswith("redis://:") and "@127.0.0.1:" in url
    client = redis.Redis.from_url(url)
    client.set("greeting", "hello")
    client.xadd("jobs", {"id": "1"})
    client.xgroup_create("jobs", "workers", id="0")
    client.xreadgroup("workers", "w1", {"jobs": ">"})
    claimed = client.xautoclaim("jobs", "workers", "w2", min_idle_time=0)[1]  # 6.2: no deleted-ids item
    assert [fields for _, fields in claimed] == [{b"id": b"1"}]
    assert client.eval("return redis.call('GET', KEYS[1])", 1, "greeting") == b"hello"
    client.close()
    pid = redis_pid(home)

    assert stop_redis(home) is True
    assert not pid_alive(pid) and redis_pid(home) is None
    assert stop_redis(home) is False

    client = redis.Redis.from_url(ensure_redis(home))
    assert client.get("greeting") == b"hello"
    assert client.xpending("jobs", "workers")["pending"] == 1
    client.close()


def test_redis_refuses_clients_without_the_password(home: Path) -> None:
    port = int(ensure_redis(home).rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(100).startswith(b"-NOAUTH")


@pytest.mark.slow
def test_prefect_server_answers_and_stops_cleanly(home: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-c", SERVICES_IN_CHILD, str(home), str(port)]
    children = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    answers = [json.loads(child.communicate(timeout=120)[0]) for child in children]
    assert answers[0] == answers[1]
    urls = ServiceURLs(**answers[0])
    assert urls.prefect_api_url == f"http://127.0.0.1:{port}/api"
    with urllib.request.urlopen(f"{urls.prefect_api_url}/health", timeout=5) as response:
        assert json.loads(response.read()) is True
    pids = [redis_pid(home), postgres_pid(home), prefect_pid(home)]
    assert all(pids), pids

    started = time.perf_counter()
    assert asyncio.run(ensure_services(_settings(home, prefect_port=port))) == urls
    assert time.perf_counter() - started < 0.1

    stop_postgres(home)  # the Prefect server outlives its database: ensuring brings the database back
    assert asyncio.run(ensure_services(_settings(home, prefect_port=port))) == urls
    assert postgres_pid(home) not in (None, pids[1])
    request = urllib.request.Request(
        f"{urls.prefect_api_url}/flows/",
        data=b'{"name": "probe"}',
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["name"] == "probe"
    pids.append(postgres_pid(home))

    stop_services(home)
    assert not any(pid_alive(pid) for pid in pids)
    assert prefect_pid(home) is None and postgres_pid(home) is None and redis_pid(home) is None


@pytest.mark.slow
def test_a_taken_port_moves_the_home_s_own_prefect_server_to_the_next_free_one(home: Path) -> None:
    class LooksLikePrefect(BaseHTTPRequestHandler):  # e.g. another home's Prefect server: never used as is
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), LooksLikePrefect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        url = ensure_prefect(home, port)
        own = read_state(home / "prefect")["port"]
        assert own != port and url == f"http://127.0.0.1:{own}/api"
        assert read_state(home / "prefect")["requested"] == port
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            assert json.loads(response.read()) is True
        assert ensure_prefect(home, port) == url  # found again, on the port recorded in the home
    finally:
        server.shutdown()
        server.server_close()
    stop_services(home)
    assert ensure_prefect(home, port) == url, "restarted on its recorded port while it stays free"


@pytest.mark.slow
def test_a_new_home_copies_the_migrated_template_with_a_password_of_its_own(home: Path) -> None:
    import importlib.metadata

    from comfyflow.embedded.template import ensure_template

    template = read_state(ensure_template() / "postgres")
    url = ensure_postgres(home)
    state = read_state(home / "postgres")
    assert state["password"] != template["password"] and f":{state['password']}@" in url
    assert state["prefect_migrated_by"] == importlib.metadata.version("prefect")
    assert not (home / "postgres" / "initdb.pw").exists()
    port = free_port()
    api = ensure_prefect(home, port)  # starts without migrating: the copied database is at Prefect's head
    assert read_state(home / "prefect")["migrated_by"] == importlib.metadata.version("prefect")
    request = urllib.request.Request(f"{api}/flows/", data=b'{"name": "probe"}',
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["name"] == "probe"


async def test_configured_urls_start_nothing(home: Path) -> None:
    settings = _settings(home, redis_url="redis://example:6379/0", prefect_api_url="http://prefect:4200/api/")
    assert await ensure_services(settings) == ServiceURLs("redis://example:6379/0", "http://prefect:4200/api")
    assert await ensure_services(settings.model_copy(update={"prefect_enabled": False})) == ServiceURLs(
        "redis://example:6379/0", None
    )
    assert sorted(os.listdir(home)) == []


@pytest.mark.slow
def test_session_prefect_server_helper_starts_and_cleans_up() -> None:
    from comfyflow.testing.prefect_server import prefect_server

    with prefect_server(services=False) as api_url:
        with urllib.request.urlopen(f"{api_url}/health", timeout=5) as response:
            assert json.loads(response.read()) is True
        port = int(api_url.split(":")[2].split("/")[0])
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
