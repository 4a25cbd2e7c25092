"""Where OpenClaw keeps each agent: its state directory, its agents, and each agent's
sessions directory, database and workspace. ``docs/openclaw.md`` describes the layout."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.config import LoadedConfig

DATABASE_NAME = "openclaw-agent.sqlite"


@dataclass(frozen=True)
class Agent:
    agent_id: str
    sessions_dir: Path
    workspace: Path


def openclaw_state_dir(loaded: LoadedConfig) -> Path:
    """``$OPENCLAW_STATE_DIR`` > config ``openclawStateDir`` > ``~/.openclaw``."""
    named = loaded.env.get("OPENCLAW_STATE_DIR") or loaded.data.get("openclawStateDir")
    if named:
        base = loaded.path.parent if loaded.path else Path.cwd()
        return (base / Path(named).expanduser()).absolute()
    return Path(loaded.env.get("HOME", str(Path.home()))) / ".openclaw"


def resolve_agents(loaded: LoadedConfig) -> list[Agent]:
    """The agents of the config file, or, when it lists none, every agent found under
    ``<OpenClaw state dir>/agents/`` with a ``sessions`` directory or an agent database."""
    root = openclaw_state_dir(loaded)
    configured = loaded.data.get("agents") or {}
    base = loaded.path.parent if loaded.path else Path.cwd()
    if configured:
        return [
            Agent(
                agent_id=agent_id,
                sessions_dir=(base / Path(entry["sessionsDir"]).expanduser()).absolute()
                if entry.get("sessionsDir")
                else root / "agents" / agent_id / "sessions",
                workspace=(base / Path(entry["workspace"]).expanduser()).absolute()
                if entry.get("workspace")
                else _default_workspace(root, agent_id),
            )
            for agent_id, entry in configured.items()
        ]
    agents_dir = root / "agents"
    try:
        names = sorted(entry.name for entry in os.scandir(agents_dir) if entry.is_dir())
    except OSError:
        return []
    # An agent has a sessions directory (JSONL storage) or, from OpenClaw 2026.7.2 on, only
    # its database; either makes it an agent.
    return [
        Agent(agent_id=name, sessions_dir=agents_dir / name / "sessions", workspace=_default_workspace(root, name))
        for name in names
        if (agents_dir / name / "sessions").is_dir() or (agents_dir / name / "agent" / DATABASE_NAME).is_file()
    ]


def _default_workspace(root: Path, agent_id: str) -> Path:
    # OpenClaw's own defaults: the main agent works in workspace/, others in workspace-<id>/.
    return root / ("workspace" if agent_id == "main" else f"workspace-{agent_id}")
