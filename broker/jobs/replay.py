"""What a member joining a job room is sent before ``joined``: a pure function of the
room's state and what the client says it has seen (no I/O).

* no ``lastSeq``: the latest ``job_status`` (if any);
* a ``lastEpoch`` that is not the room's: HISTORY_GAP (seqs restarted), then the
  latest status;
* a ``lastSeq`` ahead of the job, or older than the room's history reaches:
  HISTORY_GAP naming the first seq still held, then the latest status;
* otherwise every held event after ``lastSeq``, in seq order; when those are more
  bytes than the connection may be sent at once, a :class:`~.commands.CatchUp`
  instead (nothing else is sent): the connection writes them at its reader's pace
  and joins again from the last seq it wrote.

Then ``joined`` with the job's seq (and epoch, in a cluster).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from ..protocols import ErrorCode, error_message, joined_message, text_frame
from .commands import CatchUp


@attrs.define
class SentEvent:
    """An event the room has sent: its seq and the frame it went out as."""

    seq: int
    frame: bytes


def epoch_of(payload: bytes) -> str | None:
    """The epoch a stored event was sequenced in (a cluster's): the first ``,"epoch":"``
    of its payload, which ``JobEventParts.assemble`` puts right after the seq."""
    start = payload.find(b',"epoch":"')
    if start < 0:
        return None
    start += len(b',"epoch":"')
    end = payload.find(b'"', start)
    return payload[start:end].decode() if end > 0 else None


def join_frames(job_id: str, seq: int, epoch: str | None, history: Sequence[SentEvent],
                latest_status: SentEvent | None, last_seq: int | None, last_epoch: str | None,
                inline_bytes: int | None = None) -> list[bytes] | CatchUp:
    """The frames a joining member gets, ``joined`` last; or a CatchUp when the events
    after ``last_seq`` are over ``inline_bytes`` (None: no bound)."""
    frames: list[bytes] = []
    if last_seq is None:
        if latest_status is not None:
            frames.append(latest_status.frame)
    elif last_epoch is not None and epoch is not None and last_epoch != epoch:
        frames.append(text_frame(error_message(
            ErrorCode.HISTORY_GAP, f"epoch {last_epoch} is gone: seqs restarted in epoch {epoch}",
            jobId=job_id, lastSeq=last_seq, epoch=epoch,
        )))
        if latest_status is not None:
            frames.append(latest_status.frame)
    elif last_seq > seq or (last_seq < seq and not (history and history[0].seq <= last_seq + 1)):
        oldest = history[0].seq if history else seq + 1
        message = (
            f"lastSeq {last_seq} is ahead of this job's seq {seq}"
            if last_seq > seq
            else f"history starts at seq {oldest}; events after {last_seq} up to {oldest - 1} are gone"
        )
        frames.append(text_frame(
            error_message(ErrorCode.HISTORY_GAP, message, jobId=job_id, lastSeq=last_seq, firstSeq=oldest)
        ))
        if latest_status is not None:
            frames.append(latest_status.frame)
    else:
        replay = [item for item in history if item.seq > last_seq]
        if inline_bytes is not None and sum(len(item.frame) for item in replay) > inline_bytes:
            return CatchUp([item.frame for item in replay], replay[-1].seq)
        frames.extend(item.frame for item in replay)
    frames.append(text_frame(joined_message(job_id, seq, epoch)))
    return frames
