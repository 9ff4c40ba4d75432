"""The append-only ref channel between producer and consumer.

`channel.jsonl` holds one JSON record per line, `{"ref": {...}, "inc": k}`.
The writer is the producer (one at a time); readers never parse a partial
line: they advance their byte offset only over complete lines and re-read an
unfinished tail on the next poll. A record torn by a crash (a last line with no
newline) is cut off by the next writer before it appends, so the next record
never glues onto it, and a reader that saw the fragment never consumed it.

Beside the channel:
* `channel.consumed`: the consumer's consumed count, replaced atomically;
* sentinels `channel.closed`, `channel.failed`, `channel.consumer_done`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import failpoints
from .fileio import fsync_dir, read_json, sync_if_present, write_json_atomic  # noqa: F401 (read_json re-exported)

CHANNEL = "channel.jsonl"
CONSUMED = "channel.consumed"
CLOSED = "channel.closed"
FAILED = "channel.failed"
CONSUMER_DONE = "channel.consumer_done"


class ChannelWriter:
    """Appends records; repairs a torn tail on open."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.path = os.path.join(workdir, CHANNEL)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self.torn_bytes_repaired = 0
        self.records, self.ids, size = self._scan()
        self.size = size
        self._make_durable()

    def _make_durable(self) -> None:
        """The channel file's entry in the work dir survives a power cut (every open: an earlier
        writer may have created it and died before this fsync)."""
        os.fsync(self._fd)
        fsync_dir(self.workdir)

    def _scan(self) -> Tuple[int, List[str], int]:
        with open(self.path, "rb") as f:
            data = f.read()
        end = data.rfind(b"\n") + 1  # bytes of complete lines
        if end < len(data):
            # A record torn by a crash: cut it so the next append starts clean.
            self.torn_bytes_repaired = len(data) - end
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
        ids = []
        for line in data[:end].splitlines():
            if line.strip():
                ids.append(json.loads(line)["ref"]["sample_id"])
        return len(ids), ids, end

    def append_one(self, ref_dict: Dict[str, Any], inc: int) -> int:
        """Append one record (not yet fsynced); returns its position.

        On an error the partial record is cut off again, so the file always
        ends on a record boundary, and the error propagates.
        """
        line = (json.dumps({"ref": ref_dict, "inc": inc}, sort_keys=True, ensure_ascii=False) + "\n").encode()
        start = self.size
        try:
            half = len(line) // 2
            os.lseek(self._fd, start, os.SEEK_SET)
            os.write(self._fd, line[:half])
            failpoints.hit("channel.mid_append")
            os.write(self._fd, line[half:])
        except OSError:
            os.ftruncate(self._fd, start)
            raise
        self.size = start + len(line)
        self.records += 1
        self.ids.append(ref_dict["sample_id"])
        return self.records - 1

    def sync(self) -> None:
        failpoints.hit("channel.before_fsync")
        os.fsync(self._fd)

    def append(self, ref_dicts: List[Dict[str, Any]], inc: int) -> int:
        """Append records and fsync once; returns the position of the first."""
        first = self.records
        for rd in ref_dicts:
            self.append_one(rd, inc)
        self.sync()
        return first

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ChannelShrank(RuntimeError):
    """The channel file is shorter than the complete records a reader already passed."""


class ChannelReader:
    """Yields `(position, record)` for each complete record, in order."""

    def __init__(self, workdir: str) -> None:
        self.path = os.path.join(workdir, CHANNEL)
        self.offset = 0
        self.position = 0
        self.corrupt_lines = 0

    def poll(self) -> List[Tuple[int, Dict[str, Any]]]:
        out = []
        for line in self.poll_lines():
            rec = self.parse(line)
            if rec is not None:
                out.append(rec)
        return out

    def poll_lines(self) -> List[bytes]:
        """The new complete, non-blank lines, not parsed yet: `parse` each, in order (a reader that
        parses as it goes acts on its first record before it has parsed the rest)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        if end <= 0:
            return []
        self.offset += end
        return [line for line in data[:end].split(b"\n")[:-1] if line.strip()]

    def parse(self, line: bytes) -> Optional[Tuple[int, Dict[str, Any]]]:
        """(position, record) of the next line from `poll_lines`; None for one that does not parse
        (never written by a correct writer: counted, and it takes no position)."""
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            self.corrupt_lines += 1
            return None
        self.position += 1
        return self.position - 1, rec

    def rewind_to(self, position: int) -> List[Tuple[int, Dict[str, Any]]]:
        """Read again from the start; returns the complete records from `position` on."""
        corrupt = self.corrupt_lines
        self.offset = 0
        self.position = 0
        out = [r for r in self.poll() if r[0] >= position]
        self.corrupt_lines = corrupt  # lines met again are not new corruption
        return out

    def skip(self) -> int:
        """Pass over the new complete records without parsing them; returns how many
        (one per complete line, as a correct writer writes them). The file is read
        only when its size changed; one cut below `offset` raises ChannelShrank."""
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return 0
        if size == self.offset:
            return 0
        if size < self.offset:
            raise ChannelShrank(f"channel shrank to {size} bytes below {self.offset} bytes of complete records")
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        n = data.count(b"\n", 0, end)
        self.offset += end
        self.position += n
        return n


def count_records(workdir: str) -> int:
    r = ChannelReader(workdir)
    return len(r.poll())


def channel_ids(workdir: str) -> List[str]:
    return [rec["ref"]["sample_id"] for _, rec in ChannelReader(workdir).poll()]


def read_consumed(workdir: str) -> int:
    d = read_json(os.path.join(workdir, CONSUMED))
    return int(d["consumed"]) if d else 0


def write_consumed(workdir: str, consumed: int) -> None:
    write_json_atomic(os.path.join(workdir, CONSUMED), {"consumed": int(consumed)},
                      point="consumer.mid_consumed_replace")


def sync_consumed(workdir: str) -> None:
    """Make the sidecar as it is now durable (file and directory entry).

    A writer killed between its rename and its directory fsync leaves a count
    that is visible but not durable; a restarted consumer that reads it must
    make it durable before acting on it, or a power cut takes it back below a
    count already read (and reported)."""
    sync_if_present(os.path.join(workdir, CONSUMED))


def sentinel(workdir: str, name: str) -> Optional[Dict[str, Any]]:
    return read_json(os.path.join(workdir, name))


def set_sentinel(workdir: str, name: str, payload: Dict[str, Any]) -> None:
    write_json_atomic(os.path.join(workdir, name), payload)


def fail_closed(workdir: str, history, proc: str, reason: str, detail: str,
                say: Optional[Callable[[str], None]] = None) -> None:
    """Stop rather than risk wrong training: the `fail_closed` event, the
    `channel.failed` sentinel (so the peer stops too) and a line on stderr
    (or to `say`)."""
    history.emit("fail_closed", reason=reason, detail=detail)
    set_sentinel(workdir, FAILED, {"proc": proc, "reason": f"{reason}: {detail}", "fail_closed": True})
    line = f"{proc}: fail closed ({reason}): {detail}"
    if say is None:
        print(line, file=sys.stderr, flush=True)
    else:
        say(line)
