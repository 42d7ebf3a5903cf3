"""The occupancy scripts (broker/cluster/lua/) on a real redis-server: a job is
occupied exactly while some instance's room has members, each crossing is answered
to exactly one caller, a dead instance's rooms are swept once, and a write-back
announces again only what a sweep had vacated."""

from __future__ import annotations

import coredis

from broker.cluster import lua
from tests.support.services import redis_server

P = "t"
A, B = "a/1", "b/1"


class Scripts:
    def __init__(self, client: coredis.Redis) -> None:
        self.client = client
        self.change_script = client.register_script(lua.OCCUPANCY_CHANGE)
        self.restore_script = client.register_script(lua.OCCUPANCY_RESTORE)
        self.sweep_script = client.register_script(lua.OCCUPANCY_SWEEP)

    async def alive(self, *instances: str) -> None:
        for instance in instances:
            await self.client.set(f"{P}:node:{instance}", "1")

    async def die(self, instance: str) -> None:
        await self.client.delete([f"{P}:node:{instance}"])

    async def change(self, instance: str, job: str, occupied: bool) -> int:
        return await self.change_script(
            keys=[f"{P}:watchers:{job}", f"{P}:watching:{instance}", f"{P}:watch-instances",
                  f"{P}:watch-swept:{instance}"],
            args=[instance, "1" if occupied else "0", job])

    async def restore(self, instance: str, *jobs: str) -> list[str]:
        again = await self.restore_script(
            keys=[f"{P}:watching:{instance}", f"{P}:watch-instances", f"{P}:watch-swept:{instance}"],
            args=[instance, f"{P}:watchers:", *jobs])
        return sorted(job.decode() for job in again)

    async def sweep(self) -> list[str]:
        vacated = await self.sweep_script(
            keys=[f"{P}:watch-instances"],
            args=[f"{P}:node:", f"{P}:watching:", f"{P}:watchers:", f"{P}:watch-swept:", 60_000])
        return sorted(job.decode() for job in vacated)

    async def rooms(self, job: str) -> set[str]:
        return {field.decode() for field in await self.client.hkeys(f"{P}:watchers:{job}")}


async def test_each_crossing_is_answered_once_whoever_changes(tmp_path):
    async with redis_server(tmp_path) as redis, coredis.Redis.from_url(redis.url) as client:
        s = Scripts(client)
        await s.alive(A, B)
        assert await s.change(A, "j", True) == 1  # the first room anywhere: occupied
        assert await s.change(B, "j", True) == 0  # the same user, or another, on b: nothing new
        assert await s.change(A, "j", False) == 0  # b still has members
        assert await s.change(B, "j", False) == 1  # the last room: vacated
        assert await s.rooms("j") == set()
        assert await s.change(B, "j", True) == 1  # and again
        assert await s.change(B, "j", True) == 0  # a repeated write (its answer was lost) changes nothing


async def test_a_room_whose_field_redis_lost_still_vacates(tmp_path):
    async with redis_server(tmp_path) as redis, coredis.Redis.from_url(redis.url) as client:
        s = Scripts(client)
        await s.alive(A)
        assert await s.change(A, "j", True) == 1
        await client.flushall()  # Redis restarted empty
        assert await s.change(A, "j", False) == 1  # it was occupied: vacated now


async def test_a_dead_instances_rooms_are_swept_once(tmp_path):
    async with redis_server(tmp_path) as redis, coredis.Redis.from_url(redis.url) as client:
        s = Scripts(client)
        await s.alive(A, B)
        assert await s.change(A, "shared", True) == 1
        assert await s.change(B, "shared", True) == 0
        assert await s.change(A, "alone", True) == 1
        assert await s.sweep() == []  # everyone alive
        await s.die(A)
        assert await s.sweep() == ["alone"]  # b still watches "shared"
        assert await s.sweep() == []  # a was taken off: no second sweeper gets it
        assert await s.rooms("shared") == {B}
        assert await s.change(B, "shared", False) == 1


async def test_an_instance_swept_while_alive_writes_back_and_reoccupies_only_what_was_vacated(tmp_path):
    async with redis_server(tmp_path) as redis, coredis.Redis.from_url(redis.url) as client:
        s = Scripts(client)
        await s.alive(A, B)
        for job in ("alone", "shared", "leaving"):
            await s.change(A, job, True)
        await s.change(B, "shared", True)
        await s.die(A)  # a paused past its liveness key
        assert await s.sweep() == ["alone", "leaving"]
        await s.alive(A)  # a is back; its room of "leaving" empties before it writes back
        assert await s.change(A, "leaving", False) == 0  # swept: its vacated was recorded already
        assert not await client.sismember(f"{P}:watch-instances", A)  # the heartbeat finds it missing
        assert await s.restore(A, "alone", "shared") == ["alone"]  # occupied again; "shared" never was vacated
        assert await client.sismember(f"{P}:watch-instances", A)
        assert await s.rooms("alone") == {A} and await s.rooms("shared") == {A, B}
        assert await s.restore(A, "alone", "shared") == []  # a second write-back changes nothing
        assert await s.change(A, "alone", False) == 1


async def test_a_write_back_after_redis_lost_its_data_announces_nothing(tmp_path):
    async with redis_server(tmp_path) as redis, coredis.Redis.from_url(redis.url) as client:
        s = Scripts(client)
        await s.alive(A, B)
        await s.change(A, "j", True)
        await s.change(B, "j", True)
        await client.flushall()
        await s.alive(A, B)
        assert await s.restore(A, "j") == []
        assert await s.restore(B, "j") == []
        assert await s.rooms("j") == {A, B}
        assert await s.change(A, "j", False) == 0
        assert await s.change(B, "j", False) == 1


# -- the role on a real backplane (broker/cluster/redis_occupancy.py) ---------------


async def test_the_role_vacates_a_failed_room_and_reoccupies_after_being_swept_alive(tmp_path):
    from broker.cluster.redis import RedisBackplane
    from broker.config.sections import ClusterConfig
    from tests.support.cluster import NoFeed

    async with redis_server(tmp_path) as redis, coredis.Redis.from_url(redis.url) as client:
        config = ClusterConfig(redis_url=redis.url, key_prefix=P, node_ttl=60)
        first, second = RedisBackplane(config), RedisBackplane(config)
        feed = NoFeed()
        async with first.open(feed, feed, feed, feed), second.open(feed, feed, feed, feed):
            one, two = first.occupancy, second.occupancy
            assert await one.room_changed("failed", True) and await one.room_changed("kept", True)
            one.room_ended("failed")  # its room crashed with members
            assert await two.sweep() == []  # only the node whose room failed cleans it up
            assert await one.sweep() == [("failed", False)]
            assert await one.sweep() == []
            # the first node is swept as dead while it is alive (its liveness key gone)
            await client.delete([f"{P}:node:{first.instance}"])
            assert await two.sweep() == [("kept", False)]
            await first.node.client.set(f"{P}:node:{first.instance}", b"1")
            await one.heartbeat()  # finds itself off the instances set: writes its rooms back
            assert await one.sweep() == [("kept", True)]
            assert await two.room_changed("kept", True) is False  # the first node's room counts again
