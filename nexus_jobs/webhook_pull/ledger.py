"""The memory of ``nexus-webhook-pull`` between runs: which items were delivered (recorded
before they are acknowledged, so a re-served item is acknowledged again, not delivered
twice), failed attempts per item, and the dead letters."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..core import state
from ..core.secrets import redact

RETENTION = timedelta(days=30)
MAX_REASON_CHARS = 300

log = logging.getLogger("nexus_jobs")


class Ledger:
    """What this job remembers between runs: handled (delivered or dead-lettered) ids until
    they are acknowledged and a retention period has passed, failed attempts per id, and
    fingerprints of malformed items already dead-lettered. Dead letters are a separate file."""

    def __init__(
        self, *, state_dir: Path, job_id: str, read_only: bool, document: dict[str, Any], dead_letters: dict[str, Any]
    ) -> None:
        self.path = state.data_path(state_dir, job_id, "delivered")
        self.dead_letter_path = state.data_path(state_dir, job_id, "dead-letters")
        self.read_only = read_only
        self.handled: dict[str, Any] = _mapping(document.get("handled"))
        self.attempts: dict[str, Any] = _mapping(document.get("attempts"))
        self.malformed: dict[str, Any] = _mapping(document.get("malformed"))
        self.totals: dict[str, Any] = _mapping(document.get("totals"))
        items = dead_letters.get("items")
        self.dead_letters: list[Any] = items if isinstance(items, list) else []
        self.dirty = False

    @classmethod
    def load(cls, *, state_dir: Path, job_id: str, read_only: bool) -> Ledger:
        repair = not read_only
        path = state.data_path(state_dir, job_id, "delivered")
        document = (
            state.read_json(path, repair=repair, consequence="items re-served by Nexus may be delivered a second time")
            or {}
        )
        dead = (
            state.read_json(
                state.data_path(state_dir, job_id, "dead-letters"),
                repair=repair,
                consequence="earlier dead letters are in the file moved aside",
            )
            or {}
        )
        ledger = cls(state_dir=state_dir, job_id=job_id, read_only=read_only, document=document, dead_letters=dead)
        ledger.prune()
        return ledger

    def is_handled(self, item_id: str) -> bool:
        return item_id in self.handled

    def mode_done(self, item_id: str, mode: str) -> bool:
        return mode in self.attempts.get(item_id, {}).get("done", [])

    def mode_succeeded(self, item_id: str, mode: str) -> None:
        entry = self.attempts.setdefault(item_id, {"count": 0, "lastAt": _now()})
        entry.setdefault("done", []).append(mode)
        self.dirty = True

    def failed(self, item_id: str, reason: str) -> int:
        entry = self.attempts.setdefault(item_id, {"count": 0})
        entry.update(count=int(entry.get("count", 0)) + 1, lastError=reason[:MAX_REASON_CHARS], lastAt=_now())
        self.dirty = True
        return int(entry["count"])

    def delivered(self, item_id: str, *, agent_id: str) -> None:
        self._handled(item_id, agent_id=agent_id, outcome="delivered")
        self.save()  # before acknowledging, and before the next item's side effects

    def dead_letter(self, item: Any, *, agent_id: str, reason: str) -> None:
        item_id = item.get("id") if isinstance(item, dict) else None
        self.dead_letters.append(
            {"at": _now(), "agentId": agent_id, "reason": redact(reason)[:MAX_REASON_CHARS], "item": item}
        )
        state.write_json_atomic(self.dead_letter_path, {"items": self.dead_letters})
        log.warning("dead-lettered an item of agent %s (%s) into %s", agent_id, reason[:120], self.dead_letter_path)
        if isinstance(item_id, str) and item_id:
            self._handled(item_id, agent_id=agent_id, outcome="dead-lettered")
        self.save()

    def note_malformed(self, item: Any) -> bool:
        """Remember a malformed item; False when it was seen (and dead-lettered) before."""
        fingerprint = hashlib.sha256(json.dumps(item, sort_keys=True, default=str).encode()).hexdigest()
        if fingerprint in self.malformed:
            return False
        if not self.read_only:
            self.malformed[fingerprint] = _now()
            self.dirty = True
        return True

    def acknowledged(self, ids: Sequence[str]) -> None:
        moment = _now()
        for item_id in ids:
            if item_id in self.handled:
                self.handled[item_id]["acknowledgedAt"] = moment
        self.dirty = True
        self.save()

    def _handled(self, item_id: str, *, agent_id: str, outcome: str) -> None:
        self.handled[item_id] = {"agentId": agent_id, "outcome": outcome, "at": _now()}
        self.attempts.pop(item_id, None)
        self.totals[outcome] = int(self.totals.get(outcome, 0)) + 1
        self.dirty = True

    def prune(self) -> None:
        """Forget handled ids (acknowledged, or whose acknowledgement was never confirmed),
        stale attempts and malformed fingerprints after the retention period, so the file
        does not grow without bound."""
        cutoff = state.now_utc() - RETENTION
        for table, stamps in ((self.handled, ("acknowledgedAt", "at")), (self.attempts, ("lastAt",))):
            for key, entry in list(table.items()):
                moment = next((_mapping(entry)[s] for s in stamps if s in _mapping(entry)), None)
                if _older(moment, cutoff):
                    del table[key]
                    self.dirty = True
        for key in [key for key, moment in self.malformed.items() if _older(moment, cutoff)]:
            del self.malformed[key]
            self.dirty = True

    def save(self) -> None:
        if self.dirty and not self.read_only:
            state.ensure_directory(self.path.parent)
            document = {
                "handled": self.handled,
                "attempts": self.attempts,
                "malformed": self.malformed,
                "totals": self.totals,
            }
            state.write_json_atomic(self.path, document, compact=True)
            self.dirty = False

    def standing(self) -> dict[str, int]:
        return {
            "delivered": int(self.totals.get("delivered", 0)),
            "deadLettered": int(self.totals.get("dead-lettered", 0)),
            "deadLetters": len(self.dead_letters),
            "awaitingRetry": len(self.attempts),
            "awaitingAcknowledgement": sum(1 for entry in self.handled.values() if "acknowledgedAt" not in entry),
        }


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _older(moment: Any, cutoff: Any) -> bool:
    parsed = state.parse_time(moment)
    return parsed is not None and parsed < cutoff


def _now() -> str:
    return state.isoformat(state.now_utc())
