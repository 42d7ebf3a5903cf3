"""The backplane's user transitions (webhooks user.online / user.offline), script by
script on a real redis-server: two backplanes in this program stand for two nodes.
A claim, release or sweep decides the transition in the same script that changes the
entries, so exactly one caller is given each; a transition stays pending until
acknowledged and is handed out again after its lease; the reconcile after Redis lost
its data writes back what a sweep reads."""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager

import coredis
import pytest
import trio

from broker.cluster.interface import UserTransition
from broker.cluster.redis import RedisBackplane
from broker.config.sections import ClusterConfig
from tests.support.cluster import NoFeed
from tests.support.services import redis_server


@asynccontextmanager
async def backplanes(redis_url: str, count: int, node_ttl: float = 30.0):
    """``count`` open backplanes tracking user transitions, each a node instance."""
    async with AsyncExitStack() as stack:
        opened = []
        for index in range(count):
            backplane = RedisBackplane(ClusterConfig(redis_url=redis_url, node_id=f"n{index}", node_ttl=node_ttl))
            backplane.logins.track_users = True
            feed = NoFeed()
            await stack.enter_async_context(backplane.open(feed, feed, feed, feed))
            opened.append(backplane)
        with trio.fail_after(10):
            while any(b.problem() is not None for b in opened):
                await trio.sleep(0.01)
        yield opened


async def declare_dead(redis_url: str, backplane: RedisBackplane) -> None:
    """As after kill -9 of its node: its liveness key is gone (the test closed it first)."""
    async with coredis.Redis.from_url(redis_url) as client:
        await client.delete([f"broker:node:{backplane.instance}"])


def kinds(transitions: list[UserTransition]) -> list[str]:
    return ["on" if t.online else "off" for t in transitions]


@pytest.mark.parametrize("single", [False, True], ids=["several-connections", "single-login"])
async def test_first_claims_and_last_releases_at_the_same_instant_make_one_transition_each(tmp_path, single):
    async with redis_server(tmp_path) as redis, backplanes(redis.url, 2) as (a, b):
        made: list[UserTransition] = []
        for round_ in range(40):
            claimed: list[UserTransition] = []

            async def claim(backplane, session, claimed=claimed):
                claim = await backplane.logins.claim_login("user:racer", session, single, None)
                assert claim.admitted
                claimed.extend(claim.transitions)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(claim, a, f"a{round_}")
                nursery.start_soon(claim, b, f"b{round_}")
            assert kinds(claimed) == ["on"], (round_, claimed)
            released: list[UserTransition] = []

            async def release(backplane, session, released=released):
                released.extend(await backplane.logins.release_login("user:racer", session))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(release, a, f"a{round_}")
                nursery.start_soon(release, b, f"b{round_}")
            assert kinds(released) == ["off"], (round_, released)
            made += claimed + released
        seqs = [t.seq for t in made]
        assert seqs == list(range(seqs[0], seqs[0] + 80))  # numbered one after the other, alternating
        assert len({t.token for t in made}) == 80
        await a.logins.transitions_recorded(made)
        async with coredis.Redis.from_url(redis.url) as client:
            assert await client.zcard("broker:user-transitions") == 0  # acknowledged: nothing pending


async def test_a_claim_that_finds_only_a_dead_nodes_entries_records_offline_then_online(tmp_path):
    async with redis_server(tmp_path) as redis, backplanes(redis.url, 1) as (b,):
        async with backplanes(redis.url, 1) as (a,):
            (online,) = (await a.logins.claim_login("user:zoe", "a1", False, None)).transitions
        await declare_dead(redis.url, a)
        assert await b.logins.users_online(["zoe"]) == []
        claim = await b.logins.claim_login("user:zoe", "b1", False, None)
        assert kinds(claim.transitions) == ["off", "on"]
        assert [t.seq for t in claim.transitions] == [online.seq + 1, online.seq + 2]
        assert all(t.floor == online.floor for t in claim.transitions)  # one life of the state: gaps fillable
        # a second connection of an online user, and the release of one of two: no transition
        assert (await b.logins.claim_login("user:zoe", "b2", False, None)).transitions == []
        assert await b.logins.release_login("user:zoe", "b1") == []
        assert kinds(await b.logins.release_login("user:zoe", "b2")) == ["off"]


async def test_a_sweep_hands_out_a_dead_nodes_user_and_again_after_the_lease_until_acknowledged(tmp_path):
    async with redis_server(tmp_path) as redis, backplanes(redis.url, 1, node_ttl=1.0) as (survivor,), \
            coredis.Redis.from_url(redis.url) as client:
        async with backplanes(redis.url, 1, node_ttl=1.0) as (victim,):
            (online,) = (await victim.logins.claim_login("user:ghost", "v1", False, None)).transitions
            # the victim dies before acknowledging its user.online (its outbox write never happened)
        await declare_dead(redis.url, victim)
        before_ms = int((await client.time()).timestamp() * 1000) - 1  # Redis's clock (the lease's)
        first = await survivor.logins.sweep_dead_nodes()
        offline = next(t for t in first if not t.online)
        assert (offline.user_id, offline.seq, offline.floor) == ("ghost", online.seq + 1, online.floor)
        # leased to this sweeper for node_ttl: no other sweep takes it before then
        assert await client.zscore("broker:user-transitions", offline.token) >= before_ms + 1000
        handed: dict[bytes, int] = {}
        for transition in first:
            handed[transition.token] = handed.get(transition.token, 0) + 1
        with trio.fail_after(10):  # the sweeper "died" without acknowledging: after the lease, handed out again
            while handed.get(offline.token, 0) < 2 or handed.get(online.token, 0) < 1:
                for transition in await survivor.logins.sweep_dead_nodes():
                    handed[transition.token] = handed.get(transition.token, 0) + 1
                await trio.sleep(0.05)
        assert set(handed) == {online.token, offline.token}  # the same entries: the same numbers and webhook-ids
        await survivor.logins.transitions_recorded([online, offline])
        assert await client.zcard("broker:user-transitions") == 0
        assert await client.smembers("broker:instances") == {survivor.instance.encode()}


async def test_after_redis_lost_its_data_the_reconcile_rebuilds_what_a_sweep_reads(tmp_path):
    async with redis_server(tmp_path) as redis, backplanes(redis.url, 1) as (survivor,):
        async with backplanes(redis.url, 1) as (victim,):
            claim = await victim.logins.claim_login("user:phoenix", "v1", False, None)
            await victim.logins.transitions_recorded(claim.transitions)
            await redis.restart(wipe=True)  # every entry, set and state gone
            async with coredis.Redis.from_url(redis.url) as client:
                with trio.fail_after(15):  # the feed reconnects and reconciles
                    while b"user:phoenix" not in await client.smembers(f"broker:instance-logins:{victim.instance}"):
                        await trio.sleep(0.05)
                assert victim.instance.encode() in await client.smembers("broker:instances")
                state = await client.hgetall("broker:online:phoenix")
                assert state[b"o"] == b"1" and state[b"s"] == state[b"b"]  # online again, with no transition
                assert await client.zcard("broker:user-transitions") == 0
        await declare_dead(redis.url, victim)
        with trio.fail_after(10):
            swept: list[UserTransition] = []
            while not swept:
                swept = await survivor.logins.sweep_dead_nodes()
        assert [(t.user_id, t.online) for t in swept] == [("phoenix", False)]
