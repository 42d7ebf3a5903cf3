"""The chat bus on Redis: committed chat batches and group changes, to every node.

Plain pub/sub, best effort: a chat batch is stored before it is published, so one
that is lost (Redis unreachable, a node not subscribed) reaches its recipients from
the store on their next connection (broker/chat/relay.py).
"""

from __future__ import annotations

from collections.abc import Callable

from .interface import ChatFeed
from .redis_node import RedisNode, RedisRole


class RedisChatBus(RedisRole):
    clustered = True

    def __init__(self, node: RedisNode) -> None:
        self._node = node
        self.instance = node.instance
        self._chat_channel = f"{node.prefix}:chat"
        self._groups_channel = f"{node.prefix}:groups"
        self.feed: ChatFeed | None = None  # set while the backplane is open

    async def publish_chat(self, data: bytes) -> None:
        await self._node.command(lambda: self._node.client.publish(self._chat_channel, data))

    async def publish_group_change(self, group_id: str) -> None:
        await self._node.command(lambda: self._node.client.publish(self._groups_channel, group_id))

    def channels(self) -> dict[str, Callable[[bytes], None]]:
        return {self._chat_channel: self._on_chat, self._groups_channel: self._on_group}

    def _on_chat(self, data: bytes) -> None:
        if self.feed is not None:
            self.feed.deliver_remote_chat(data)

    def _on_group(self, data: bytes) -> None:
        if self.feed is not None:
            self.feed.remote_group_changed(data.decode())
