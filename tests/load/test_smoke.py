"""A short run of every load scenario (the harness's own tests, part of `make test`).

Each runs as a subprocess: the harness pins its process to a CPU, which must not
leak into the test process. Speed is not asserted (that is what the full runs and
docs/PERFORMANCE.md are for); correctness is: nothing missed, duplicated or
reordered, every phase complete.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path, *args):
    out = tmp_path / "result.json"
    result = subprocess.run([sys.executable, "-m", "tests.load", *args, "--quiet", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "results:" in result.stdout  # the table was printed
    return json.loads(out.read_text())


def assert_clean(rows):
    for row in rows:
        for key in ("missed", "duplicated", "reordered", "corrupt"):
            assert row.get(key, 0) == 0, row
        assert row.get("complete", True), row


@pytest.mark.slow
def test_fanout_compares_against_the_python_baselines(tmp_path):
    # socket.io, the third baseline, needs `make bench-setup` (npm): not part of make test
    document = run(tmp_path, "fanout", "--compare", "--baselines", "websockets", "trio-websocket",
                   "--subscribers", "50", "--duration", "1", "--rate", "500")
    rows = document["results"]
    assert {(r["target"], r["phase"]) for r in rows} == {
        (t, p) for t in ("trio-broker", "websockets", "trio-websocket") for p in ("max", "fixed")}
    assert_clean([r for r in rows if r["target"] != "trio-websocket"])
    assert all("trio_broker_ratio" in r for r in rows if r["target"] != "trio-broker")
    assert all(r["deliveries_per_s"] > 0 and r["p99_ms"] > 0 for r in rows)
    maxima = [r for r in rows if r["phase"] == "max"]
    assert all(r["server_cpu_us_per_delivery"] > 0 and 0 <= r["server_sys_share"] <= 1 for r in maxima)


@pytest.mark.slow
def test_publish_sequential_and_pipelined_lose_nothing(tmp_path):
    document = run(tmp_path, "publish", "--compare", "--baselines", "websockets", "--subscribers", "20",
                   "--duration", "1", "--publishers", "2", "--depth", "4")
    rows = document["results"]
    assert [(r["target"], r["phase"], r["publishers"], r["depth"]) for r in rows] == [
        (t, p, k, d) for t in ("trio-broker", "websockets") for p, k, d in (("sequential", 1, 1), ("pipelined", 2, 4))]
    assert_clean(rows)
    for row in rows:
        assert row["events"] > 0 and row["failed"] == row["unanswered"] == 0
        assert row["deliveries"] == 20 * row["events"]  # every answered event reached every subscriber
        # CPU comes from /proc in clock ticks (10 ms): a starved one-second phase may count none
        assert row["publish_p50_ms"] > 0 and row["server_cpu_us_per_publish"] >= 0
        assert 0 <= row["window_held_pct"] <= 100
    assert all("trio_broker_ratio" in r for r in rows if r["target"] == "websockets")


@pytest.mark.slow
def test_publish_without_subscribers_measures_the_answer(tmp_path):
    rows = run(tmp_path, "publish", "--subscribers", "0", "--duration", "0.5")["results"]
    assert [r["phase"] for r in rows] == ["sequential", "pipelined"]
    for row in rows:
        assert row["events"] > 0 and row["failed"] == row["unanswered"] == 0 and row["deliveries"] == 0
        assert row["publish_p50_ms"] > 0 and row["window_held_pct"] is None


def test_one_publisher_summary_is_sequential_http_over_one_socketio_socket():
    from tests.load.__main__ import _one_publisher

    def row(target, phase, publishers, rate):
        return {"target": target, "phase": phase, "publishers": publishers, "deliveries": 10 * rate,
                "deliveries_per_s": rate, "server_cpu_us_per_delivery": 1000 / rate}

    rows = [row("trio-broker", "sequential", 1, 30_000), row("trio-broker", "pipelined", 1, 50_000),
            row("socket.io", "sequential", 1, 20_000), row("socket.io", "pipelined", 1, 60_000)]
    summary = _one_publisher(rows)
    assert summary["one_publisher_ratio"] == 0.5
    assert summary["trio_broker_sequential_deliveries_per_s"] == 30_000
    assert summary["socketio_one_socket_deliveries_per_s"] == 60_000
    rows[-1]["publishers"] = 16  # not one publisher socket: no such comparison in this run
    assert _one_publisher(rows) is None


@pytest.mark.slow
@pytest.mark.parametrize("auth", [[], ["--jwt"]], ids=["static", "jwt"])
def test_connect_measures_rate_and_memory(tmp_path, auth):
    (row,) = run(tmp_path, "connect", "--connections", "200", *auth)["results"]
    assert row["connections"] == 200 and row["failed"] == 0 and row["held"] == 200
    assert row["connections_per_s"] > 0 and row["bytes_per_connection"] > 0
    assert row["auth"] == ("jwt" if auth else "static")
    if auth:  # every user's offline replay finished too
        assert row["ready_per_s"] > 0 and row["server_cpu_us_per_ready"] > 0


@pytest.mark.slow
def test_chat_is_exactly_once_in_order(tmp_path):
    (row,) = run(tmp_path, "chat", "--pairs", "5", "--messages", "20")["results"]
    assert row["delivered"] == row["messages"] == 200 and row["acked"] == 200
    assert row["exactly_once_in_order"] is True and row["stored_and_delivered_per_s"] > 0


@pytest.mark.slow
def test_slow_consumers_get_4003_and_others_lose_nothing(tmp_path):
    (row,) = run(tmp_path, "slow", "--subscribers", "50", "--duration", "2", "--rate", "200",
                 "--outbox-bytes", "65536")["results"]
    assert json.loads(row["slow_close_codes"]) == {"4003": row["slow"]}  # they read again within close_timeout
    assert row["evicted_4003"] == row["slow"]
    assert_clean([row])


@pytest.mark.slow
def test_churn_loses_nothing_across_reconnects(tmp_path):
    (row,) = run(tmp_path, "churn", "--clients", "20", "--duration", "2", "--rate", "50")["results"]
    assert row["reconnects"] > 0 and row["events"] > 0
    assert_clean([row])


@pytest.mark.slow
def test_proxy_relays_intact(tmp_path):
    (row,) = run(tmp_path, "proxy", "--clients", "2", "--messages", "50", "--frame-bytes", "16384")["results"]
    assert row["frames_relayed"] == 200 and row["mb_per_s"] > 0
    assert_clean([row])


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "benchmarks" / "node_modules" / "socket.io").is_dir(),
                    reason="the socket.io baseline is installed by `make bench-setup` (npm), not by make test")
def test_publish_against_socketio(tmp_path):
    document = run(tmp_path, "publish", "--compare", "--baselines", "socket.io", "--subscribers", "20",
                   "--duration", "1", "--depth", "4")
    rows = [r for r in document["results"] if r["target"] == "socket.io"]
    assert [r["phase"] for r in rows] == ["sequential", "pipelined"]
    assert_clean(rows)
    assert all(r["events"] > 0 and r["deliveries"] == 20 * r["events"] and "trio_broker_ratio" in r for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("bad", [["fanout", "--target", "nope"], ["churn", "--target", "websockets"]])
def test_bad_arguments_fail_clearly(tmp_path, bad):
    result = subprocess.run([sys.executable, "-m", "tests.load", *bad], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and (result.stderr or result.stdout)


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.postgres
def test_cluster_three_nodes_on_redis_and_postgresql(tmp_path):
    from tests.support.services import REDIS_SERVER

    if REDIS_SERVER is None:
        pytest.skip("redis-server not installed (run scripts/ensure-redis)")
    document = run(tmp_path, "cluster", "--subscribers", "30", "--duration", "1", "--rate", "600")
    rows = document["results"]
    assert [r["phase"] for r in rows] == ["max", "fixed", "churn"] and rows[-1]["reconnects"] > 0
    assert_clean(rows)
