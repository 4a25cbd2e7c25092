"""Pure functions of the core: the exit-code table and secret redaction."""

from __future__ import annotations

import pytest

from nexus_jobs.core import secrets
from nexus_jobs.core.exits import Exit, word_of, worst

pytestmark = pytest.mark.inprocess


def test_every_exit_code_has_a_machine_word() -> None:
    assert [(member.value, member.word) for member in Exit if member.value in (0, 1, 69, 70, 75, 77, 78)] == [
        (0, "success"),
        (1, "partial"),
        (69, "unavailable"),
        (70, "internal"),
        (75, "busy"),
        (77, "auth"),
        (78, "config"),
    ]
    assert word_of(130) == word_of(143) == "interrupted"
    assert word_of(4) == "failure", "a code the project never uses is a plain failure"


def test_worst_ranks_a_bug_above_everything_and_a_held_lock_lowest() -> None:
    assert worst([]) == 0
    assert worst([0, 75]) == 75
    assert worst([75, 1]) == 1
    assert worst([1, 69, 77]) == 77
    assert worst([78, 2, 70]) == 70
    assert worst([78, 99]) == 99, "an unknown code counts as worst"


def test_redaction_replaces_the_longest_secret_first_and_ignores_short_ones() -> None:
    secrets.register_secret("abc")  # too short to redact without mangling ordinary text
    secrets.register_secret("s3cret-value")
    secrets.register_secret("s3cret-value-longer")
    assert secrets.redact("key s3cret-value-longer, abc") == "key ***, abc"
