"""The `force-move start|update|stop` verbs that `cluster backend` and `cluster site` share.

Both move a share of an entity's users to others of its kind as they log in. The verbs, their
checks and their messages are the same; only how the entity and its destinations are found
and where the ForceMove is stored differ, and a `ForceMoveSubject` says that.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import click

from palomar.cli.cluster_context import NUMERIC_ARGS, ClusterContext, CommandError, pass_ctx
from palomar.cluster import validation as check
from palomar.cluster.model import ForceMove
from palomar.geodb.repository import GeoDB


class _Movable(Protocol):
    id: Any
    force_move: ForceMove | None


E = TypeVar("E", bound=_Movable)


@dataclass(frozen=True)
class ForceMoveSubject(Generic[E]):
    """What a force-move applies to: a backend (by host) or a site (by name)."""

    noun: str
    """`backend` or `site`, for help texts and messages."""
    argument: str
    """The name of the command argument naming the entity (`host`, `name`)."""
    find: Callable[[GeoDB, str], Awaitable[E]]
    """The entity named by an argument (the moved one or a DEST); raises CommandError when none."""
    destination: Callable[[str, E, str, E], str]
    """(argument, entity, DEST argument, DEST entity) -> what the ForceMove stores for that DEST;
    raises CommandError when the DEST cannot receive the entity's users."""
    store: Callable[[GeoDB, E, ForceMove], Awaitable[None]]
    clear: Callable[[GeoDB, E], Awaitable[None]]


def add_force_move_group(parent: click.Group, subject: ForceMoveSubject[Any]) -> click.Group:
    """Add `force-move` with its start, update and stop verbs under `parent`."""
    noun, arg = subject.noun, subject.argument

    @parent.group("force-move", help=f"Move a share of a {noun}'s users to other {noun}s as they log in.")
    def force_move() -> None:
        pass

    @force_move.command("start", context_settings=NUMERIC_ARGS,
                        help=f"Start moving PERCENT% of {arg.upper()}'s users to the DEST {noun}s.")
    @click.option("--id", "move_id", metavar="ID", help="Hash salt; reuse it to keep the same users selected.")
    @click.argument("target", metavar=arg.upper())
    @click.argument("percent")
    @click.argument("dest", nargs=-1, required=True)
    @pass_ctx
    def start(ctx: ClusterContext, move_id: str | None, target: str, percent: str, dest: tuple[str, ...]) -> None:
        pct = check.percentage(percent)
        fm_id = check.parse_uuid(move_id, "force-move ID") if move_id else uuid.uuid4()

        async def action(db: GeoDB) -> None:
            found = await subject.find(db, target)
            stored: list[str] = []
            for dest_arg in dest:
                other = await subject.find(db, dest_arg)
                if other.id == found.id:
                    raise CommandError(f"{noun} '{target}' cannot force-move to itself")
                stored.append(subject.destination(target, found, dest_arg, other))
            await subject.store(db, found, ForceMove(id=fm_id, percentage=pct, dest=tuple(stored)))

        ctx.run(action)

    @force_move.command("update", context_settings=NUMERIC_ARGS,
                        help="Change the percentage of a running force-move (same ID, same users first).")
    @click.argument("target", metavar=arg.upper())
    @click.argument("percent")
    @pass_ctx
    def update(ctx: ClusterContext, target: str, percent: str) -> None:
        pct = check.percentage(percent)

        async def action(db: GeoDB) -> None:
            found = await subject.find(db, target)
            if found.force_move is None:
                raise CommandError(f"{noun} '{target}' has no force-move running")
            fm = found.force_move
            await subject.store(db, found, ForceMove(id=fm.id, percentage=pct, dest=fm.dest))

        ctx.run(action)

    @force_move.command("stop", help="Stop a force-move (nothing happens when none is running).")
    @click.argument("target", metavar=arg.upper())
    @pass_ctx
    def stop(ctx: ClusterContext, target: str) -> None:
        async def action(db: GeoDB) -> None:
            await subject.clear(db, await subject.find(db, target))

        ctx.run(action)

    return force_move
