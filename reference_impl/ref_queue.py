"""StreamingRefQueue: the consumer's view of the channel.

It reads records in channel order and decides, for each, one of:

* `skip released`: the sample is durably trained (released at reconcile), so
  training it again would be a duplicate; the record is done at once;
* `skip duplicate`: the sample was already taken by this incarnation (the same
  sample twice in the channel, at-least-once delivery); the record is done
  when that first copy is done;
* `take`: the sample goes into the current training window; the record is
  done when the sample's ack is durable.

The skip set is kept for the whole incarnation: a producer restart may append
a second copy of a released sample long after the first was skipped, and a
reader moved back (`rewind`) meets records it has decided already.

`consumed` is the number of leading channel records that are all done. It only
moves forward, and it equals the channel's record count once everything is
acked, which keeps the producer's `in_flight = published - consumed` exact
across restarts.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Deque, Dict, Iterable, List, Optional, Set, Tuple, Union

from .channel import ChannelReader
from .contracts import SampleRef


class StreamingRefQueue:
    def __init__(self, reader: ChannelReader, skip_ids: Iterable[str] = ()) -> None:
        self.reader = reader
        self.skip_ids: Set[str] = set(skip_ids)
        self.taken: Set[str] = set()
        # Read, not yet decided: raw lines (parsed as they are decided, so a long backlog costs
        # nothing before the first decision) or, after a rewind, parsed (position, record) pairs.
        self._buffer: Deque[Union[bytes, Tuple[int, Dict[str, Any]]]] = deque()
        self._done: Dict[int, bool] = {}  # position -> done, for positions >= consumed
        self._waiting: Dict[str, List[int]] = {}  # sample id -> positions done with it
        self.consumed = 0
        self.read_positions = 0  # records handed out or skipped so far

    def poll(self) -> int:
        """Read what the channel gained; returns how many lines (each a record, unless corrupt)."""
        new = self.reader.poll_lines()
        self._buffer.extend(new)
        return len(new)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def next(self) -> Optional[Tuple[str, int, Optional[SampleRef]]]:
        """The next decision: ("take", pos, ref) or ("skip-released"/"skip-duplicate", pos, ref)."""
        item = self._next_record()
        if item is None:
            return None
        pos, rec = item
        ref = SampleRef.from_dict(rec["ref"])
        sid = ref.sample_id
        self.read_positions = pos + 1
        if sid in self.skip_ids:
            self._mark(pos)
            return ("skip-released", pos, ref)
        if sid in self.taken:
            self._done[pos] = False
            self._waiting.setdefault(sid, []).append(pos)
            return ("skip-duplicate", pos, ref)
        self.taken.add(sid)
        self._done[pos] = False
        self._waiting.setdefault(sid, []).append(pos)
        return ("take", pos, ref)

    def _next_record(self) -> Optional[Tuple[int, Dict[str, Any]]]:
        """The next buffered (position, record), parsing it now if it is still a raw line."""
        while self._buffer:
            item = self._buffer.popleft()
            if isinstance(item, bytes):
                item = self.reader.parse(item)
                if item is None:  # a line that does not parse
                    continue
            return item
        return None

    def rewind(self, records: int) -> Tuple[int, int]:
        """Move the read position `records` back (at-least-once delivery: a reader that
        meets records again); returns (from, to) positions. The decisions for the records
        met again follow the same rules: they are skipped, never taken twice."""
        frm = self.read_positions
        to = max(0, frm - int(records))
        self._buffer = deque(self.reader.rewind_to(to))
        self.read_positions = to
        return frm, to

    def mark_acked(self, sample_ids: Iterable[str]) -> int:
        """Record durable acks; returns the new consumed count."""
        for sid in sample_ids:
            self.skip_ids.add(sid)
            for pos in self._waiting.pop(sid, ()):
                self._mark(pos)
        return self.consumed

    def _mark(self, pos: int) -> None:
        self._done[pos] = True
        while self._done.get(self.consumed):
            del self._done[self.consumed]
            self.consumed += 1
