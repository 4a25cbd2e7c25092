"""Where the state lives: ``--state-dir`` > ``$NEXUS_STATE_DIR`` > config ``stateDir`` >
systemd's ``$STATE_DIRECTORY`` > ``$XDG_STATE_HOME/nexus-jobs``; and moving the state an
older release kept beside the config file (docs/operating.md)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from . import config
from .errors import ConfigError

log = logging.getLogger("nexus_jobs")


def resolve_state_dir(*, flag: str | None, loaded: config.LoadedConfig, adopt_old_state: bool = True) -> Path:
    """``--state-dir`` > ``$NEXUS_STATE_DIR`` > config ``stateDir`` (relative to the config
    file) > systemd's ``$STATE_DIRECTORY`` > ``$XDG_STATE_HOME/nexus-jobs``. Never the
    current directory by accident (cron starts jobs in ``$HOME``) and never beside the config
    file: a config in /etc is read by users who cannot write there (docs/operating.md).

    State that an older release kept in ``state/`` beside the config file is moved to the
    default directory on first use (``adopt_old_state``), with one line saying so."""
    env = loaded.env
    for candidate in (flag, env.get("NEXUS_STATE_DIR")):
        if candidate:
            return Path(candidate).expanduser().absolute()
    if loaded.data.get("stateDir"):
        base = loaded.path.parent if loaded.path else Path.cwd()
        return (base / Path(loaded.data["stateDir"]).expanduser()).absolute()
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0]).absolute()
    default = default_state_dir(loaded)
    old = old_state_dir(loaded)
    if adopt_old_state and old is not None and old != default:
        _move_state(old, default)
    return default


def default_state_dir(loaded: config.LoadedConfig) -> Path:
    """``$XDG_STATE_HOME/nexus-jobs``, by default ``~/.local/state/nexus-jobs``."""
    home = Path(loaded.env.get("HOME", str(Path.home())))
    return Path(config.xdg_base(loaded.env, "XDG_STATE_HOME") or home / ".local" / "state") / "nexus-jobs"


def old_state_dir(loaded: config.LoadedConfig) -> Path | None:
    """The ``state/`` beside the config file that earlier releases used, when it holds
    state files and nothing else claims it."""
    if loaded.path is None:
        return None
    old = loaded.path.parent / "state"
    try:
        return old if old.is_dir() and any(old.glob("*.json")) else None
    except OSError:
        return None


def _move_state(old: Path, new: Path) -> None:
    """Move the old state directory into place as a whole: a copy under a temporary name,
    a rename, then removal of the old one; an interrupted move leaves the old one intact."""
    import shutil  # imported here: it imports bz2 and lzma, milliseconds on every start

    try:
        if new.exists() and any(new.iterdir()):
            log.warning("state in %s is ignored: %s already holds state (move or remove one)", old, new)
            return
        new.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = new.with_name(f".{new.name}.moving-{os.getpid()}")
        shutil.copytree(old, staging, symlinks=True)
        if new.exists():
            new.rmdir()
        os.rename(staging, new)
    except OSError as error:
        raise ConfigError(
            f"state directory {old}: cannot move it to {new}: {error.strerror or error}; "
            f"move it yourself, or keep it with --state-dir {old}"
        ) from None
    try:
        shutil.rmtree(old)
    except OSError as error:
        log.warning("copied the state from %s to %s; remove %s yourself (%s)", old, new, old, error.strerror)
        return
    log.warning("moved the state from %s to %s (state no longer lives beside the config file)", old, new)
