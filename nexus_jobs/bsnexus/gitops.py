"""Git steps around an execution, as BSNexus does them: make sure the repository and the
task's branch exist, and after a successful execution commit everything on that branch and
report the commit hash (every successful task gets its own commit, so it can be reverted)."""

from __future__ import annotations

from pathlib import Path

from ..core import processes

GIT_TIMEOUT_SECONDS = 120.0
DEFAULT_BRANCH = "main"
FALLBACK_NAME = "BSNexus Worker"
FALLBACK_EMAIL = "bsnexus-worker@localhost"


class GitError(RuntimeError):
    """A git step failed; the text is one line naming the step."""


def _git(repo_path: str, *args: str, check: bool = True) -> processes.Finished:
    """git through the project's one child-process runner (docs/child-processes.md)."""
    try:
        finished = processes.run(
            ["git", "-C", repo_path, *args],
            env={"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"},
            timeout_seconds=GIT_TIMEOUT_SECONDS,
        )
    except processes.CannotStart:
        raise GitError("git is not installed (needed for tasks with a repo_path)") from None
    if finished.ended_by == processes.TIMEOUT:
        raise GitError(f"git {args[0]} took longer than {GIT_TIMEOUT_SECONDS:g} s")
    if check and finished.exit_code != 0:
        reason = finished.last_error_lines() or f"exit code {finished.exit_code}"
        raise GitError(f"git {args[0]} failed in {repo_path}: {reason}")
    return finished


def _identity(repo_path: str) -> list[str]:
    """Commit as the configured user, or as the worker when none is configured."""
    if _git(repo_path, "config", "user.email", check=False).exit_code == 0:
        return []
    return ["-c", f"user.name={FALLBACK_NAME}", "-c", f"user.email={FALLBACK_EMAIL}"]


def ensure_repo(repo_path: str) -> None:
    """A repository at ``repo_path`` with at least one commit (created when missing)."""
    path = Path(repo_path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GitError(f"cannot create repo_path {repo_path}: {error.strerror}") from None
    if not (path / ".git").exists():
        _git(repo_path, "init", "-q", "-b", DEFAULT_BRANCH)
    if _git(repo_path, "rev-parse", "--verify", "-q", "HEAD", check=False).exit_code != 0:
        _git(repo_path, *_identity(repo_path), "commit", "-q", "--allow-empty", "-m", "chore: initialize repository")


def ensure_branch(repo_path: str, branch_name: str) -> None:
    """Check out ``branch_name``, creating it from the default branch (or HEAD) if needed."""
    current = _git(repo_path, "rev-parse", "--abbrev-ref", "HEAD", check=False).output.strip()
    if current == branch_name:
        return
    if _git(repo_path, "rev-parse", "--verify", "-q", f"refs/heads/{branch_name}", check=False).exit_code == 0:
        _git(repo_path, "checkout", "-q", branch_name)
        return
    base = DEFAULT_BRANCH
    if _git(repo_path, "rev-parse", "--verify", "-q", f"refs/heads/{base}", check=False).exit_code != 0:
        base = "HEAD"
    _git(repo_path, "checkout", "-q", "-b", branch_name, base)


def prepare(repo_path: str, branch_name: str) -> None:
    ensure_repo(repo_path)
    if branch_name:
        ensure_branch(repo_path, branch_name)


def commit_task(repo_path: str, *, task_id: str, title: str, branch_name: str) -> str:
    """Stage and commit everything on the task's branch; the new commit's hash."""
    if branch_name:
        ensure_branch(repo_path, branch_name)
    _git(repo_path, "add", "-A")
    message = f"feat(task-{task_id}): {title}" if title else f"feat(task-{task_id})"
    _git(repo_path, *_identity(repo_path), "commit", "-q", "--allow-empty", "--no-verify", "-m", message)
    return _git(repo_path, "rev-parse", "HEAD").output.strip()


def revert(repo_path: str, *, commit_hash: str, branch_name: str) -> str:
    """Revert ``commit_hash`` on the branch; the hash of the revert commit."""
    ensure_branch(repo_path, branch_name)
    _git(repo_path, *_identity(repo_path), "revert", "--no-edit", commit_hash)
    return _git(repo_path, "rev-parse", "HEAD").output.strip()
