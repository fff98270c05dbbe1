"""The node-state directory: what diskguard keeps on the node itself (a hostPath).

This module owns the directory's layout; every piece of node state gets one file here,
named below, each a small JSON document with a schema version, written atomically
(temporary file, fsync, rename, fsync of the directory) so a crash leaves the old or the
new document, never half of one. Today it holds the limit record: which (cgroup, device)
rules diskguard set, written *before* the kernel write it describes, so `reset-all` can
clear exactly those and never a rule someone else set. Beside it, the capacity record:
what `diskguard profile` measured of each data disk (node/capacity.py). Later node state
(pod budgets) gets its own file next to them.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterable
from pathlib import Path

import attrs

from diskguard.logs import get_logger
from diskguard.model import Device

log = get_logger(__name__)

# The directory's files (the layout): one per kind of node state.
LIMIT_RECORD_FILE = "limits.json"
CAPACITY_FILE = "capacity.json"

LIMIT_RECORD_KIND = "diskguard.limit-record"
LIMIT_RECORD_SCHEMA = 1
# A record is bounded by the container cgroups on the node (entries of removed cgroups are
# pruned at each save); refuse to read anything absurdly larger than that could be.
MAX_RECORD_BYTES = 64 * 1024 * 1024

# One rule: the cgroup directory (absolute) and the device "MAJ:MIN".
Rule = tuple[str, str]


class StateError(Exception):
    """The node-state directory or one of its files cannot be read or written."""


class NoRecordError(StateError):
    """No limit record exists yet (a node first upgraded from a version without one)."""


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: a crash at any point leaves the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)  # the rename itself must survive a power loss
    finally:
        os.close(dir_fd)


@attrs.frozen
class StateDir:
    """The node-state directory and where each piece of state lives in it."""

    path: Path

    @property
    def limit_record(self) -> Path:
        return self.path / LIMIT_RECORD_FILE

    def ensure(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StateError(f"cannot create the node-state directory {self.path}: {exc}") from exc


def rule(cgroup: Path, device: Device) -> Rule:
    return (str(cgroup), f"{device.major}:{device.minor}")


def encode_record(rules: Iterable[Rule]) -> bytes:
    doc = {
        "kind": LIMIT_RECORD_KIND,
        "schema": LIMIT_RECORD_SCHEMA,
        "rules": [{"cgroup": c, "device": d} for c, d in sorted(set(rules))],
    }
    return json.dumps(doc, indent=1).encode() + b"\n"


def decode_document(
    data: bytes, where: str, kind: str, schema: int, what: str
) -> dict[str, object]:
    """A node-state document of `kind` at `schema` (`what` names it for people); anything
    else is refused, with why."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting past the limit
        raise StateError(f"{where} is not JSON: {type(exc).__name__}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != kind:
        raise StateError(f"{where} is not a diskguard {what}")
    if doc.get("schema") != schema:
        raise StateError(
            f"{where} has schema {doc.get('schema')!r}; this diskguard reads schema "
            f"{schema} (use the diskguard version that wrote it)"
        )
    return doc


def decode_record(data: bytes, where: str) -> frozenset[Rule]:
    """The rules in a record; anything but schema 1 of our kind is refused, with why."""
    doc = decode_document(data, where, LIMIT_RECORD_KIND, LIMIT_RECORD_SCHEMA, "limit record")
    rules = doc.get("rules")
    if not isinstance(rules, list):
        raise StateError(f"{where}: 'rules' is not a list")
    found = set()
    for item in rules:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("cgroup"), str)
            and isinstance(item.get("device"), str)
        ):
            raise StateError(f"{where}: malformed rule {item!r:.200}")
        found.add((item["cgroup"], item["device"]))
    return frozenset(found)


def read_record(state: StateDir) -> frozenset[Rule]:
    path = state.limit_record
    try:
        with path.open("rb") as f:
            data = f.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        raise NoRecordError(f"no limit record at {path}") from None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_RECORD_BYTES:
        raise StateError(f"{path} is larger than {MAX_RECORD_BYTES} bytes")
    return decode_record(data, str(path))


class LimitRecord:
    """The agent's copy of the record, saved to disk before the kernel writes it covers.

    Blocking file I/O: used from the applier's worker thread only.
    """

    def __init__(self, state: StateDir) -> None:
        self.state = state
        self.saves = 0
        self.problem = ""  # why the last save failed, "" when the record is current
        state.ensure()
        try:
            self._rules: set[Rule] = set(read_record(state))
        except NoRecordError:
            self._rules = set()
        except StateError as exc:
            # An unreadable record (a newer schema, corruption): keep it for the operator
            # and start a fresh one beside it; reset-all then clears only what this run sets.
            log.error(
                "limit record unreadable; moving it aside, starting a new one", error=str(exc)
            )
            aside = state.limit_record.with_suffix(".unreadable")
            try:
                os.replace(state.limit_record, aside)
            except OSError as move:
                raise StateError(f"cannot move {state.limit_record} aside: {move}") from move
            self._rules = set()

    @property
    def rules(self) -> frozenset[Rule]:
        return frozenset(self._rules)

    def __contains__(self, item: Rule) -> bool:
        return item in self._rules

    def add(self, rules: Iterable[Rule]) -> bool:
        """Record `rules` on disk before they are written; False if saving failed."""
        new = set(rules) - self._rules
        if not new and not self.problem:
            return True
        self._rules |= new
        return self.save()  # also retried while the last save failed

    def discard(self, rules: Iterable[Rule]) -> None:
        """Forget rules diskguard cleared, so reset-all never takes a rule someone else
        sets there later. Saved at once when anything was forgotten (rare: a pod turning
        excluded, a disk moving); a crash before that save only leaves a rule recorded
        that is already clear."""
        gone = self._rules & set(rules)
        if gone:
            self._rules -= gone
            self.save()

    def forget(self, cgroups: Iterable[Path]) -> None:
        """The pods of these cgroups are gone (their cgroups go with them): drop their rules
        from memory; the next save writes the smaller record (a crash before that leaves
        rules of cgroups that no longer exist, which every save and reset-all skip)."""
        gone = {str(c) for c in cgroups}
        self._rules = {r for r in self._rules if r[0] not in gone}

    def save(self) -> bool:
        # Cgroups that are gone took their rules with them.
        self._rules = {r for r in self._rules if os.path.isdir(r[0])}
        try:
            write_atomically(self.state.limit_record, encode_record(self._rules))
        except OSError as exc:
            self.problem = f"cannot write {self.state.limit_record}: {exc.strerror}"
            if exc.errno not in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EIO):
                self.problem += f" (errno {exc.errno})"
            log.error("limit record not saved; limits are still enforced", error=self.problem)
            return False
        self.saves += 1
        self.problem = ""
        return True
