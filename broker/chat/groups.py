"""Group management: create, change, delete and look up chat groups (HTTP API, CLI,
embedders).

A group's membership lives in its conversation's room actor (loaded on start, changed
through it), so a change is a command in the group's mailbox: every send is checked
against the membership the room has at that moment. The change is stored first, then
applied to the room, then (in a cluster) announced, so the other nodes' actors of the
group load it again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import attrs

from actors import Reply

from ..hub.rooms import RoomUnavailable
from ..protocols.chat import is_group_id
from ..protocols.text import USER_ID_RULE, is_user_id
from ..store import AnyStore, StoreError
from ..store import chat_sql as chat_store

if TYPE_CHECKING:
    from ..hub.rooms import RoomSupervisor
    from .relay import ChatRelay


class GroupError(Exception):
    """A group operation was refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@attrs.frozen
class ChangeGroup:
    """Create, add, remove or delete, in the group's mailbox order."""

    action: str  # "create" | "add" | "remove" | "delete"
    users: tuple[str, ...]
    name: str
    reply: Reply[Any]


class GroupState(Protocol):
    """What a group change uses of its conversation's room (changed in place)."""

    key: str
    kind: str  # "group" for a group; anything else refuses the change
    exists: bool
    name: str
    members: set[str]


async def apply_group_change(group: GroupState, change: ChangeGroup, store: AnyStore,
                             relay: ChatRelay | None) -> None:
    """Store ``change``, apply it to ``group`` and answer it with the members (sorted);
    a refusal or a store failure answers it with a GroupError. Runs in the room."""
    try:
        await _apply(group, change, store)
    except StoreError as exc:
        change.reply.fail(GroupError(503, f"group change not stored: {exc}"))
        return
    if change.reply.done:
        return  # refused
    if relay is not None and relay.active:
        await relay.group_changed(group.key)  # the other nodes' actors load it again
    change.reply.set(sorted(group.members))


async def _apply(group: GroupState, change: ChangeGroup, store: AnyStore) -> None:
    if group.kind != "group":
        change.reply.fail(GroupError(400, f"{group.key} is not a group id"))
    elif change.action == "create":
        if group.exists:
            change.reply.fail(GroupError(409, f"group {group.key} already exists"))
            return
        statements = chat_store.create_group_statements(group.key, change.name)
        statements += chat_store.add_members_statements(group.key, change.users)
        await store.write(statements, mail_for=change.users)
        group.exists, group.name, group.members = True, change.name, set(change.users)
    elif not group.exists:
        change.reply.fail(GroupError(404, f"no group {group.key}"))
    elif change.action == "add":
        await store.write(chat_store.add_members_statements(group.key, change.users), mail_for=change.users)
        group.members.update(change.users)
    elif change.action == "remove":
        await store.write(chat_store.remove_members_statements(group.key, change.users))
        group.members.difference_update(change.users)
    elif change.action == "delete":
        await store.write(chat_store.delete_group_statements(group.key))
        group.exists, group.members = False, set()


class Groups:
    """Chat groups for the HTTP API, the CLI and embedders: each change goes through
    the group's conversation room (``rooms``), lookups read the store."""

    def __init__(self, rooms: RoomSupervisor[Any], store: AnyStore) -> None:
        self._rooms = rooms
        self._store = store

    async def change_group(self, group_id: str, action: str, users: tuple[str, ...] = (), name: str = "") -> list[str]:
        """Apply ``action`` in the group's room; the members after it. GroupError if refused."""
        if not is_group_id(group_id):
            raise GroupError(400, "group id must be 1-128 characters of letters, digits and ._:@- (not 'all' or 'p:...')")
        for user in users:
            if not is_user_id(user):
                raise GroupError(400, f"members must each be {USER_ID_RULE}")
        reply: Reply[list[str]] = Reply()
        try:
            await self._rooms.send(group_id, ChangeGroup(action, tuple(users), name or group_id, reply))
            return await reply.wait()
        except (RoomUnavailable, StoreError) as exc:
            raise GroupError(503, f"group change not stored: {exc}") from None

    async def create_group(self, group_id: str, members: list[str], name: str = "") -> list[str]:
        return await self.change_group(group_id, "create", tuple(members), name)

    async def add_members(self, group_id: str, members: list[str]) -> list[str]:
        return await self.change_group(group_id, "add", tuple(members))

    async def remove_members(self, group_id: str, members: list[str]) -> list[str]:
        return await self.change_group(group_id, "remove", tuple(members))

    async def delete_group(self, group_id: str) -> None:
        await self.change_group(group_id, "delete")

    async def group(self, group_id: str) -> dict[str, Any]:
        found = await chat_store.group(self._store, group_id) if is_group_id(group_id) else None
        if found is None:
            raise GroupError(404, f"no group {group_id}")
        return {"groupId": group_id, "name": found[0], "members": found[1]}

    async def groups_of(self, user_id: str) -> list[str]:
        return await chat_store.groups_of(self._store, user_id)
