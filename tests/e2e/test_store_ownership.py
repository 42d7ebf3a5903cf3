"""One store, one owner (issue 20 section 2): a second broker on the same SQLite file,
a second lone node on the same PostgreSQL schema, and a node that starts before
PostgreSQL is reachable. Real ``broker serve`` processes where the issue says so."""

import os
import signal
import subprocess
import sys

import pytest
import trio

from broker import serve
from broker.store import StoreError
from broker.store.ownership import StoreInUse, sqlite_claim
from broker.tools.httpclient import http_request
from tests.support import services
from tests.support.helpers import API_KEY, JWT_SECRET, ROOT, make_config
from tests.support.processes import wait_listening
from tests.support.services import free_port


def broker_process(port: int, **env: str) -> subprocess.Popen:
    full_env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "BROKER_JWT_SECRET": JWT_SECRET,
                "BROKER_API_KEY": API_KEY, "WS_AUTH_TOKEN": "demo-token", **env}
    return subprocess.Popen([sys.executable, "-m", "broker", "serve", "--config", str(ROOT / "config.toml")],
                            env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def refused_with(process: subprocess.Popen) -> str:
    """The stderr of a broker that must exit on its own (non-zero, one clear line)."""
    with trio.fail_after(30):
        _, stderr = await trio.to_thread.run_sync(process.communicate)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    return stderr


async def publish_ok(port: int) -> None:
    answer = await http_request("POST", f"http://127.0.0.1:{port}/api/publish", timeout=5,
                                headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
                                body=b'{"jobId":"job-1","type":"job_status","data":{"status":"RUNNING"}}')
    assert answer.status == 200, answer.body


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    for stream in (process.stderr,):
        if stream:
            stream.close()


def test_a_claimed_sqlite_file_refuses_a_second_claim_naming_the_owner(tmp_path):
    db = str(tmp_path / "b.sqlite3")
    with sqlite_claim(db):
        with pytest.raises(StoreInUse, match=rf"in use by another broker \(pid {os.getpid()}\)"):
            with sqlite_claim(db):
                pass
    with sqlite_claim(db):  # released with the first block
        pass


async def test_an_embedded_broker_on_a_file_in_use_fails_to_start(nursery, tmp_path):
    config = make_config(tmp_path)
    await nursery.start(serve, config)
    with pytest.raises(StoreInUse):
        await nursery.start(serve, config)


@pytest.mark.slow  # broker serve processes
async def test_a_second_broker_serve_on_the_same_sqlite_file_is_refused_and_the_first_goes_on(tmp_path):
    db = tmp_path / "shared.sqlite3"
    first_port, second_port = free_port(), free_port()
    first = broker_process(first_port, BROKER_DB_PATH=str(db))
    try:
        await wait_listening(first)
        stderr = await refused_with(broker_process(second_port, BROKER_DB_PATH=str(db)))
        assert f"the SQLite store {db} is in use by another broker (pid {first.pid})" in stderr
        await publish_ok(first_port)  # the owner never noticed
    finally:
        stop(first)


@pytest.mark.slow  # broker serve processes
async def test_a_broker_killed_with_sigkill_leaves_no_lock_that_blocks_its_restart(tmp_path):
    db = tmp_path / "b.sqlite3"
    port = free_port()
    first = broker_process(port, BROKER_DB_PATH=str(db))
    try:
        await wait_listening(first)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        stop(first)
    assert (tmp_path / "b.sqlite3.lock").exists()  # the file stays; the kernel dropped the lock
    again = broker_process(port, BROKER_DB_PATH=str(db))
    try:
        await wait_listening(again)
        await publish_ok(port)
    finally:
        stop(again)


@pytest.mark.slow  # broker serve processes
async def test_a_second_node_without_redis_on_one_postgresql_schema_is_refused(tmp_path, pg_url):
    first_port = free_port()
    first = broker_process(first_port, BROKER_STORE_URL=pg_url)
    try:
        await wait_listening(first)
        stderr = await refused_with(broker_process(free_port(), BROKER_STORE_URL=pg_url))
        assert "is already used by another broker node" in stderr and "redis_url" in stderr
        await publish_ok(first_port)
    finally:
        stop(first)


@pytest.mark.slow  # broker serve processes
@pytest.mark.cluster  # a real redis-server
async def test_a_redis_node_beside_a_lone_node_is_refused_but_redis_nodes_share(tmp_path, pg_url):
    services.require_redis()
    async with services.redis_server(tmp_path) as redis:
        lone = broker_process(free_port(), BROKER_STORE_URL=pg_url)
        try:
            await wait_listening(lone)
            stderr = await refused_with(broker_process(free_port(), BROKER_STORE_URL=pg_url,
                                                       BROKER_CLUSTER_REDIS_URL=redis.url,
                                                       BROKER_CLUSTER_NODE_ID="b"))
            assert "already used by a broker node without Redis" in stderr
        finally:
            stop(lone)
        nodes = [broker_process(free_port(), BROKER_STORE_URL=pg_url, BROKER_CLUSTER_REDIS_URL=redis.url,
                                BROKER_CLUSTER_NODE_ID=name) for name in ("a", "b")]
        try:
            for node in nodes:
                await wait_listening(node)
        finally:
            for node in nodes:
                stop(node)


async def test_another_schema_of_the_same_database_is_another_deployment(nursery, tmp_path, postgres_server):
    one, other = (postgres_server.create_schema(f"own_{name}") for name in ("one", "other"))
    await nursery.start(serve, make_config(tmp_path / "a", store={"url": one}))
    await nursery.start(serve, make_config(tmp_path / "b", store={"url": other}))


@pytest.mark.slow  # broker serve processes
async def test_a_node_started_before_postgresql_waits_for_it(tmp_path, postgres_server):
    postgres_server.stop()
    port = free_port()
    node = broker_process(port, BROKER_STORE_URL=postgres_server.url, BROKER_STORE_CONNECT_TIMEOUT="60")
    try:
        lines = []
        with trio.fail_after(30):  # its first attempt fails and says so, in one line
            while not any("not reachable (attempt 1" in line for line in lines):
                line = await trio.to_thread.run_sync(node.stderr.readline, abandon_on_cancel=True)
                assert line, "the node exited: " + "".join(lines)
                lines.append(line)
        await trio.to_thread.run_sync(postgres_server.start)
        lines += await wait_listening(node)
        assert not any("Traceback" in line for line in lines), "".join(lines)
        await publish_ok(port)
    finally:
        stop(node)
        if not postgres_server.accepts_connections():
            postgres_server.start()


@pytest.mark.slow  # broker serve processes
async def test_a_node_whose_postgresql_never_comes_exits_with_one_line(tmp_path):
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    node = broker_process(free_port(), BROKER_STORE_URL=dead, BROKER_STORE_CONNECT_TIMEOUT="1.5")
    stderr = await refused_with(node)
    assert "broker: store: PostgreSQL at" in stderr and "not reachable within 1.5s" in stderr
    assert stderr.count("not reachable (attempt") >= 2  # backoff, one line per attempt


async def test_embedding_surfaces_the_store_error(nursery, tmp_path):
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(StoreError, match="not reachable within"):
        await nursery.start(serve, make_config(tmp_path, store={"url": dead, "connect_timeout": 0.5}))
