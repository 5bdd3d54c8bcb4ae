"""The registry's audit trail: an append-only, hash-chained JSON-lines log under storage_root.

Every registry action (register, alias move, promotion accepted or refused, rollback, approval,
deploy) appends one event: who, when, what, why and the outcome. Each line carries the SHA-256
of the previous line's hash and its own content, so editing, deleting or reordering any line
breaks the chain at that line and :meth:`AuditLog.verify` names it. Appends hold an exclusive
``flock`` on the log (processes on one machine, or a shared file system that honours locks) and
are fsync'd before the call returns.

Example:
    >>> log = AuditLog(PlatformConfig.load())                             # doctest: +SKIP
    >>> log.append("alias_set", model="churn", version="3", alias="champion")  # doctest: +SKIP
    >>> log.verify().ok                                                    # doctest: +SKIP
    True
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlplatform.config import PlatformConfig

GENESIS = "0" * 64
#: Where the log lives under ``storage_root``.
AUDIT_FILE = ("audit", "registry.jsonl")


def current_actor() -> str:
    """Who acts: ``$MLP_ACTOR`` if set (CI systems set it), else ``user@host``."""
    return os.environ.get("MLP_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def _digest(prev: str, event: dict[str, Any]) -> str:
    body = json.dumps(event, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev + body).encode()).hexdigest()


@dataclass(frozen=True)
class AuditVerification:
    """What :meth:`AuditLog.verify` found."""

    ok: bool
    events: int
    bad_line: int | None = None     # 1-based line number of the first broken line
    message: str = ""


class AuditLog:
    """The hash-chained audit log of one platform config (``<storage_root>/audit/registry.jsonl``).

    Args:
        config: Platform config (where ``storage_root`` is).
        path: Override the log file (tests).
    """

    def __init__(self, config: PlatformConfig, path: str | Path | None = None):
        self.path = Path(path) if path else config.path(*AUDIT_FILE)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the log's exclusive lock (appends take it too; it is re-entrant per process
        only through :meth:`append` ``_locked=True``). The registry holds it across a whole
        promotion so racing promotions are serialised and each sees the other's outcome."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def append(self, action: str, *, model: str, version: str | None = None,
               alias: str | None = None, actor: str | None = None, reason: str | None = None,
               outcome: str = "ok", details: dict[str, Any] | None = None,
               _locked: bool = False) -> dict[str, Any]:
        """Append one event and fsync it; returns the event as written (with ``seq``/``hash``).

        Args:
            action: ``register``, ``alias_set``, ``promote``, ``rollback``, ``approve``,
                ``deploy``, ``card``, ...
            model, version, alias: What the action was on.
            actor: Who (default :func:`current_actor`).
            reason: Why, in the actor's words.
            outcome: ``ok``, ``accepted``, ``refused``, ``failed``, ``exists``.
            details: Anything else worth keeping (gate numbers, from/to versions).
            _locked: The caller already holds :meth:`locked`.
        """
        if _locked:
            return self._append(action, model, version, alias, actor, reason, outcome, details)
        with self.locked():
            return self._append(action, model, version, alias, actor, reason, outcome, details)

    def _append(self, action, model, version, alias, actor, reason, outcome, details):
        last = self._last()
        event = {
            "seq": (last["seq"] + 1) if last else 1,
            "time": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "actor": actor or current_actor(), "action": action, "model": model,
            "version": None if version is None else str(version), "alias": alias,
            "reason": reason, "outcome": outcome, "details": details or {},
            "prev_hash": last["hash"] if last else GENESIS,
        }
        event["hash"] = _digest(event["prev_hash"], event)
        line = json.dumps(event, sort_keys=True, default=str) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return event

    def _last(self) -> dict[str, Any] | None:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return None
        with open(self.path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            pos, tail = fh.tell(), b""
            while pos > 0 and tail.count(b"\n") < 2:
                step = min(4096, pos)
                pos -= step
                fh.seek(pos)
                tail = fh.read(step) + tail
        return json.loads(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])

    def events(self, model: str | None = None, action: str | None = None,
               alias: str | None = None, version: str | None = None) -> list[dict[str, Any]]:
        """Events in order, optionally filtered (the log is read whole: it grows by one line
        per registry action)."""
        if not self.path.is_file():
            return []
        out = []
        with open(self.path) as fh:
            for line in fh:
                if not line.strip():
                    continue
                e = json.loads(line)
                if ((model is None or e.get("model") == model)
                        and (action is None or e.get("action") == action)
                        and (alias is None or e.get("alias") == alias)
                        and (version is None or e.get("version") == str(version))):
                    out.append(e)
        return out

    def verify(self) -> AuditVerification:
        """Check every line's hash and its link to the previous line.

        Returns:
            ``ok`` and the number of events, or the first broken line and what is wrong there.
        """
        if not self.path.is_file():
            return AuditVerification(True, 0, message=f"no audit log yet at {self.path}")
        prev, count = GENESIS, 0
        with open(self.path) as fh:
            for number, line in enumerate(fh, 1):
                try:
                    event = json.loads(line)
                    stored = event.pop("hash")
                except (json.JSONDecodeError, KeyError, AttributeError):
                    return AuditVerification(False, count, number,
                                             f"line {number} of {self.path} is not an audit event")
                if event.get("prev_hash") != prev:
                    return AuditVerification(
                        False, count, number, f"line {number} of {self.path} does not follow "
                        "line {}: a line was removed, inserted or reordered".format(number - 1))
                if _digest(prev, event) != stored:
                    return AuditVerification(
                        False, count, number,
                        f"line {number} of {self.path} was modified (its hash does not match)")
                if event.get("seq") != count + 1:
                    return AuditVerification(False, count, number,
                                             f"line {number} of {self.path} has seq "
                                             f"{event.get('seq')}, expected {count + 1}")
                prev, count = stored, count + 1
        return AuditVerification(True, count, message=f"{count} events, chain intact")
