"""Task messages in, result messages out: the BSNexus wire format.

Fields are flat strings. Execution tasks come from ``tasks:queue`` with ``worker_prompt``,
QA reviews from ``tasks:qa`` with ``qa_prompt``; both prompts are JSON ``{"prompt": ...}``.
A message that cannot be understood becomes a failure result naming the problem: it is
never dropped and never stops the worker.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

EXECUTION = "execution"
QA = "qa"
REVERT = "revert"
# Results carry at most this much executor output (Redis entries should stay small).
OUTPUT_LIMIT_CHARS = 16_000


class BadTask(ValueError):
    """The message cannot be run; the text says why."""


@dataclass(frozen=True)
class Task:
    message_id: str
    kind: str  # EXECUTION, QA or REVERT
    task_id: str
    prompt: str
    repo_path: str
    branch_name: str
    title: str
    commit_hash: str = ""
    executor_type: str = ""


def parse(message_id: str, fields: Mapping[str, str], *, kind: str) -> Task:
    """The task in ``fields``; raises :class:`BadTask` with a clear reason."""
    task_id = fields.get("task_id", "").strip()
    if not task_id:
        raise BadTask(f"message {message_id} has no task_id field (fields: {', '.join(sorted(fields)) or 'none'})")
    if kind == EXECUTION and fields.get("type", "") == REVERT:
        kind = REVERT
    repo_path = fields.get("repo_path", "").strip()
    if repo_path and (not os.path.isabs(repo_path) or "\0" in repo_path):
        raise BadTask(f"repo_path must be an absolute path, got {repo_path[:200]!r}")
    branch_name = fields.get("branch_name", "").strip()
    if branch_name and (branch_name.startswith("-") or any(ch in branch_name for ch in " ~^:?*[\\\0")):
        raise BadTask(f"branch_name {branch_name[:200]!r} is not a valid git branch name")
    common = {
        "message_id": message_id,
        "task_id": task_id,
        "repo_path": repo_path,
        "branch_name": branch_name,
        "title": fields.get("title", "").strip(),
        "executor_type": fields.get("executor_type", "").strip(),
    }
    if kind == REVERT:
        commit_hash = fields.get("commit_hash", "").strip()
        if not (repo_path and branch_name and commit_hash):
            raise BadTask("a revert needs repo_path, branch_name and commit_hash")
        return Task(kind=REVERT, prompt="", commit_hash=commit_hash, **common)
    prompt_field = "worker_prompt" if kind == EXECUTION else "qa_prompt"
    prompt = _prompt(fields, prompt_field)
    if kind == EXECUTION:
        prompt = wrap_retry_feedback(prompt, fields.get("retry_feedback", ""), fields.get("retry_count", ""))
    return Task(kind=kind, prompt=prompt, **common)


def _prompt(fields: Mapping[str, str], name: str) -> str:
    raw = fields.get(name)
    if raw is None:
        raise BadTask(f"no {name} field")
    try:
        document = json.loads(raw)
    except RecursionError:  # hostile nesting: bad input, not a crash (docs/bsnexus.md)
        raise BadTask(f"{name} is nested too deeply to read ({len(raw)} characters)") from None
    except ValueError:
        preview = raw[:60] + ("..." if len(raw) > 60 else "")
        raise BadTask(f'{name} is not JSON (expected {{"prompt": "..."}}), got {preview!r}') from None
    prompt = document.get("prompt") if isinstance(document, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadTask(f'{name} has no "prompt" text (expected {{"prompt": "..."}})')
    return prompt


def wrap_retry_feedback(prompt: str, feedback: str, retry_count: str) -> str:
    """A retried task tells the executor what went wrong last time (as BSNexus does)."""
    if not feedback.strip():
        return prompt
    attempt = retry_count.strip() or "?"
    return (
        f"PREVIOUS ATTEMPT FAILED (attempt {attempt}).\n"
        f"Feedback from previous attempt:\n{feedback}\n\n"
        "Please fix the issues identified above and complete the task.\n\n"
        f"Original task:\n{prompt}"
    )


def execution_result(
    *,
    task_id: str,
    worker_id: str,
    success: bool,
    error_message: str = "",
    commit_hash: str = "",
    branch_name: str = "",
    output_path: str = "",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    return {
        "task_id": task_id,
        "worker_id": worker_id,
        "type": EXECUTION,
        "success": "true" if success else "false",
        "output_path": output_path,
        "error_message": error_message,
        "commit_hash": commit_hash,
        "branch_name": branch_name,
        **(extra or {}),
    }


def qa_result(
    *,
    task_id: str,
    worker_id: str,
    passed: bool,
    feedback: str = "",
    error_message: str = "",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    return {
        "task_id": task_id,
        "worker_id": worker_id,
        "type": QA,
        "passed": "true" if passed else "false",
        "feedback": feedback,
        "error_message": error_message,
        **(extra or {}),
    }


def failure_result(
    kind: str, *, task_id: str, worker_id: str, error_message: str, fields: Mapping[str, str], extra: Mapping[str, str]
) -> dict[str, str]:
    """A failure of the right shape for the stream the message came from."""
    if kind == QA:
        # The backend reads only `feedback` from a failed review and hands it to the retry.
        return qa_result(
            task_id=task_id,
            worker_id=worker_id,
            passed=False,
            feedback=error_message,
            error_message=error_message,
            extra=extra,
        )
    return execution_result(
        task_id=task_id,
        worker_id=worker_id,
        success=False,
        error_message=error_message,
        branch_name=fields.get("branch_name", ""),
        extra=extra,
    )


def truncate(text: str, limit: int = OUTPUT_LIMIT_CHARS) -> str:
    """The end of ``text`` (where errors and verdict explanations usually are)."""
    return text if len(text) <= limit else "[... truncated ...]\n" + text[-limit:]
