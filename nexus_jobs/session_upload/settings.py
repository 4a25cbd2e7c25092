"""What one run of ``nexus-session-upload`` works with, resolved from flags, environment and
config by :func:`command.load_settings`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..nexus.settings import NexusSettings
from ..openclaw.agents import Agent

JOB_TYPE = "session_upload"


@dataclass(frozen=True)
class Settings:
    job_id: str
    state_dir: Path
    agents: tuple[Agent, ...]
    endpoint: str
    nexus: NexusSettings
    grace_seconds: float
    concurrency: int
    max_bytes: int
    retention_seconds: float
    retry_rejected: bool
    store_root: Path | None
    show_progress: bool
    # --file: forget this one marker (of the one agent) and send only it, if complete.
    only_file: str | None = None
