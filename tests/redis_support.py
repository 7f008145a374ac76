"""Redis for tests: the shared server at ``REDIS_URL`` and throwaway servers and clusters.

Load the fixtures with ``pytest_plugins = ("tests.redis_support",)``.

Redis tests skip with a reason when no Redis is reachable, unless ``WICKET_REQUIRE_REDIS=1``
(set by ``.ci/run``): then they fail, so CI cannot go green without having run them.
Throwaway servers listen on free ports, persist nothing and are killed at teardown, even
when the test fails.

PYTEST_DONT_REWRITE: test modules import helpers from here before pytest_plugins registers it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NoReturn

import pytest
import redis

from proxy.state.base import Store
from proxy.state.memory import MemoryStore
from proxy.state.redis import RedisStore

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
START_TIMEOUT = 10.0


def redis_required() -> bool:
    return os.environ.get("WICKET_REQUIRE_REDIS") == "1"


def redis_missing(reason: str) -> NoReturn:
    """Skip the test, or fail it when the run requires Redis."""
    if redis_required():
        pytest.fail(f"{reason} (WICKET_REQUIRE_REDIS=1, so Redis tests must run)", pytrace=False)
    pytest.skip(f"{reason}; start Redis or set REDIS_URL (WICKET_REQUIRE_REDIS=1 makes this a failure)")


def shared_redis_url() -> str:
    """``REDIS_URL`` (default redis://127.0.0.1:6379) after checking that it answers."""
    url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        redis_missing(f"no Redis answers at {url}: {exc}")
    finally:
        client.close()
    return url


def redis_binary(name: str = "redis-server") -> str:
    path = shutil.which(name)
    if path is None:
        redis_missing(f"{name} is not installed, so this test cannot run its own Redis")
    return path


def free_port(*, with_bus: bool = False) -> int:
    """A free local port; ``with_bus`` also needs port + 10000 free (the Cluster bus)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not with_bus:
            return port
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


class RedisServer:
    """One ``redis-server`` subprocess that can be killed and restarted on the same port."""

    def __init__(
        self, workdir: Path, port: int | None = None, *, extra: tuple[str, ...] = (), config: Path | None = None
    ) -> None:
        self.workdir = workdir
        self.port = port
        self.extra = extra
        self.config = config  # a config file (redis-server reads it only as its first argument)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"redis-{uuid.uuid4().hex[:8]}.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def start(self) -> RedisServer:
        """Start and wait until it answers PING; picks a free port on first start if none was given."""
        attempts = 3 if self.port is None else 1
        for attempt in range(attempts):
            if self.port is None or attempt > 0:
                self.port = free_port(with_bus="--cluster-enabled" in self.extra)
            try:
                self._spawn()
                return self
            except RuntimeError:
                self.kill()
                if attempt == attempts - 1:
                    raise
        return self

    def _spawn(self) -> None:
        args = [
            redis_binary(),
            *((str(self.config),) if self.config else ()),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--protected-mode", "no",
            *self.extra,
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            client = self.client()
            try:
                client.ping()
                return
            except (redis.RedisError, OSError):
                time.sleep(0.05)
            finally:
                client.close()
        tail = self.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"redis-server on port {self.port} did not start:\n{tail}")

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-run, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        self.process = None


@contextmanager
def running_redis(workdir: Path, *, extra: tuple[str, ...] = ()) -> Iterator[RedisServer]:
    server = RedisServer(workdir, extra=extra)
    try:
        yield server.start()
    finally:
        server.kill()


@contextmanager
def running_cluster(workdir: Path, nodes: int = 3) -> Iterator[list[RedisServer]]:
    """A local Redis Cluster of ``nodes`` primaries made by ``redis-cli --cluster create``."""
    servers: list[RedisServer] = []
    try:
        for i in range(nodes):
            extra = (
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(workdir / f"nodes-{i}-{uuid.uuid4().hex[:8]}.conf"),
                "--cluster-node-timeout", "5000",
            )  # fmt: skip
            servers.append(RedisServer(workdir, extra=extra).start())
        create = [
            redis_binary("redis-cli"),
            "--cluster", "create",
            *(f"127.0.0.1:{s.port}" for s in servers),
            "--cluster-replicas", "0",
            "--cluster-yes",
        ]  # fmt: skip
        done = subprocess.run(create, capture_output=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout.decode()}{done.stderr.decode()}")
        _wait_cluster_ok(servers)
        yield servers
    finally:
        for server in servers:
            server.kill()


def _wait_cluster_ok(servers: list[RedisServer]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        states = []
        for server in servers:
            client = server.client()
            try:
                info = client.execute_command("CLUSTER INFO")  # parsed into a dict
                states.append(info.get("cluster_state") == "ok" and int(info.get("cluster_slots_assigned", 0)) == 16384)
            except (redis.RedisError, OSError):
                states.append(False)
            finally:
                client.close()
        if all(states):
            return
        time.sleep(0.1)
    raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")


@contextmanager
def running_sentinel(workdir: Path, service: str = "wicketmaster") -> Iterator[tuple[RedisServer, RedisServer]]:
    """A master and one Sentinel monitoring it as ``service``; yields (master, sentinel)."""
    with running_redis(workdir) as master:
        port = free_port()
        config = workdir / f"sentinel-{port}.conf"  # Sentinel rewrites it, so it must be writable
        config.write_text(
            f"sentinel monitor {service} 127.0.0.1 {master.port} 1\nsentinel down-after-milliseconds {service} 5000\n"
        )
        sentinel = RedisServer(workdir, port, extra=("--sentinel",), config=config)
        try:
            sentinel.start()
            _wait_sentinel_master(sentinel, service)
            yield master, sentinel
        finally:
            sentinel.kill()


def _wait_sentinel_master(server: RedisServer, service: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        client = server.client()
        try:
            state = client.sentinel_masters().get(service)
            if state and state.get("is_master") and not state.get("is_sdown") and not state.get("is_odown"):
                return
        except (redis.RedisError, OSError):
            pass
        finally:
            client.close()
        time.sleep(0.05)
    raise RuntimeError(f"Sentinel on port {server.port} does not report {service!r} as a healthy master")


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared Redis; share it politely: unique key prefixes, delete only your own keys."""
    return shared_redis_url()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server that the test may kill and restart."""
    redis_binary()
    with running_redis(tmp_path) as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """Each test that takes ``store`` runs twice: on the memory store and on a throwaway Redis."""
    if request.param == "memory":
        yield MemoryStore()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    redis_store = RedisStore(server.url)
    yield redis_store
    await redis_store.close()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """A private three-node Redis Cluster (no replicas)."""
    redis_binary()
    redis_binary("redis-cli")
    with running_cluster(tmp_path) as servers:
        yield servers


@pytest.fixture
def redis_sentinel(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A private master plus one Sentinel that monitors it as ``wicketmaster``."""
    redis_binary()
    with running_sentinel(tmp_path) as pair:
        yield pair


def cluster_url(servers: list[RedisServer]) -> str:
    return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in servers)
