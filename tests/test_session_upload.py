"""nexus-session-upload, driven as a user drives it: realistic OpenClaw trees, the embedded
store and a local HTTP double of Nexus."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from nexus_jobs.nexus.sessions import json_string
from nexus_jobs.session_upload import archived
from tests.conftest import assert_clean_failure, run_cli, script
from tests.nexus_double import LIMIT_BYTES, ROUTE, NexusDouble
from tests.openclaw_tree import STAMP, Tree, build_realistic, make_old, new_session_id, node_zstd, transcript

COMMAND = "nexus-session-upload"


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return build_realistic(tmp_path / "openclaw")


@pytest.fixture
def env(clean_env: dict[str, str], tree: Tree, tmp_path: Path) -> dict[str, str]:
    # The embedded store, asked for by name (with no endpoint at all, runs that store say so).
    clean_env.update(
        OPENCLAW_STATE_DIR=str(tree.root), NEXUS_STATE_DIR=str(tmp_path / "state"), NEXUS_ENDPOINT="embedded"
    )
    return clean_env


def http_env(env: dict[str, str], nexus: NexusDouble, **extra: str) -> dict[str, str]:
    return {**env, "NEXUS_ENDPOINT": nexus.url, "NEXUS_API_KEY": nexus.api_key, **extra}


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under ``root`` with its bytes, mtime and mode."""
    result = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        content = (
            path.read_bytes()
            if path.is_file() and not path.is_symlink()
            else os.readlink(path).encode()
            if path.is_symlink()
            else b""
        )
        result[str(path.relative_to(root))] = (content, info.st_mtime_ns, info.st_mode)
    return result


def markers(env: dict[str, str], job_id: str = "session-upload") -> dict[str, dict[str, dict[str, object]]]:
    """The markers of the run's one destination, by agent: those of the markers document, of
    the uploaded archives' per-period files and of the SQLite records, as one object per agent."""
    state_dir = Path(env["NEXUS_STATE_DIR"])
    document = json.loads((state_dir / f"{job_id}.markers.json").read_text())
    ((where, destination),) = document["destinations"].items()
    agents: dict[str, dict[str, dict[str, object]]] = {}
    for agent_id in {*destination["agents"], *destination.get("archived", {})}:
        periods = dict(destination.get("archived", {}).get(agent_id, {}))
        shelf = archived.Shelf(state_dir, job_id, where, agent_id, periods)
        sqlite = archived.SqliteRecords(state_dir / f"{shelf.prefix}sqlite.json", destination["sqlite"], agent_id)
        agent_markers = archived.AgentMarkers(dict(destination["agents"].get(agent_id, {})), shelf, sqlite)
        agents[agent_id] = {name: agent_markers[name] for name in sorted(agent_markers)}
    return agents


# --- completion rules -------------------------------------------------------------------


def test_realistic_tree_uploads_exactly_the_completed_transcripts_and_touches_nothing(
    tree: Tree, env: dict[str, str]
) -> None:
    before = snapshot(tree.root)
    result = run_cli(COMMAND, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == "", "a successful cron run is quiet"
    inbox = Path(env["NEXUS_STATE_DIR"]) / "nexus-store" / "inbox" / "main"
    stored = {path.name: path.read_bytes() for path in inbox.iterdir()}
    assert stored == tree.expected_uploads
    assert snapshot(tree.root) == before, "OpenClaw's tree must stay byte-for-byte unchanged"


def test_unreadable_index_holds_back_every_plain_transcript_but_not_archives(tree: Tree, env: dict[str, str]) -> None:
    (tree.sessions_dir / "sessions.json").write_text('{"agent:main:main": {"sessionId": ')
    result = run_cli(COMMAND, env=env)
    assert result.returncode == 0, result.stderr
    assert "sessions.json is not valid JSON" in result.stderr
    inbox = Path(env["NEXUS_STATE_DIR"]) / "nexus-store" / "inbox" / "main"
    stored = {path.name for path in inbox.iterdir()}
    assert stored == {name for name in tree.expected_uploads if ".jsonl." in name}


def test_missing_index_holds_back_plain_transcripts(tree: Tree, env: dict[str, str]) -> None:
    (tree.sessions_dir / "sessions.json").unlink()
    assert run_cli(COMMAND, env=env).returncode == 0
    stored = {path.name for path in (Path(env["NEXUS_STATE_DIR"]) / "nexus-store" / "inbox" / "main").iterdir()}
    assert stored and all(".jsonl." in name for name in stored)


def test_orphan_uploads_once_its_lock_goes_and_grace_passes(tree: Tree, env: dict[str, str]) -> None:
    locked = next(tree.sessions_dir.glob("*.jsonl.lock"))
    fresh = next(name for name in tree.held_back if (tree.sessions_dir / name).stat().st_mtime > time.time() - 60)
    assert run_cli(COMMAND, env=env).returncode == 0
    inbox = Path(env["NEXUS_STATE_DIR"]) / "nexus-store" / "inbox" / "main"
    assert not (inbox / locked.name[: -len(".lock")]).exists() and not (inbox / fresh).exists()
    locked.unlink()
    make_old(tree.sessions_dir / fresh)
    assert run_cli(COMMAND, env=env).returncode == 0
    assert (inbox / locked.name[: -len(".lock")]).exists() and (inbox / fresh).exists()


def test_grace_minutes_option_is_honoured(tree: Tree, env: dict[str, str]) -> None:
    fresh = next(name for name in tree.held_back if (tree.sessions_dir / name).stat().st_mtime > time.time() - 60)
    assert run_cli(COMMAND, "--grace-minutes", "0", env=env).returncode == 0
    assert (Path(env["NEXUS_STATE_DIR"]) / "nexus-store" / "inbox" / "main" / fresh).exists()


# --- the Nexus contract -------------------------------------------------------------------


def test_http_upload_sends_the_contract_and_second_run_sends_nothing(
    tree: Tree, env: dict[str, str], nexus: NexusDouble
) -> None:
    environment = http_env(env, nexus)
    result = run_cli(COMMAND, env=environment)
    assert result.returncode == 0, result.stderr
    posts = nexus.posts()
    assert {request.body["fileName"] for request in posts} == set(tree.expected_uploads)  # type: ignore[index]
    for request in posts:
        body = request.body
        assert body is not None
        content = tree.expected_uploads[body["fileName"]]
        assert body["transcript"].encode("utf-8") == content
        assert body["agentId"] == "main"
        assert body["fileName"].startswith(body["sessionId"])
        assert body["sha256"] == hashlib.sha256(content).hexdigest() and body["bytes"] == len(content)
        assert body.get("archiveReason") == (
            "reset" if ".reset." in body["fileName"] else "deleted" if ".deleted." in body["fileName"] else None
        )
        assert request.headers["x-functions-key"] == nexus.api_key
        assert request.headers["Content-Type"] == "application/json"
    again = run_cli(COMMAND, env=environment)
    assert again.returncode == 0 and len(nexus.posts()) == len(posts), "a second run uploads nothing"


def test_query_auth_mode_sends_the_key_as_code(tree: Tree, env: dict[str, str], nexus: NexusDouble) -> None:
    result = run_cli(COMMAND, env=http_env(env, nexus, NEXUS_AUTH_MODE="query"))
    assert result.returncode == 0, result.stderr
    assert all("code" in request.query and "x-functions-key" not in request.headers for request in nexus.posts())


def test_changed_file_is_uploaded_again_and_reported(tree: Tree, env: dict[str, str], nexus: NexusDouble) -> None:
    environment = http_env(env, nexus)
    assert run_cli(COMMAND, env=environment).returncode == 0
    orphan = next(name for name in tree.expected_uploads if name.endswith(".jsonl") and "-topic-" not in name)
    path = tree.sessions_dir / orphan
    with path.open("ab") as handle:
        handle.write(b'{"type":"message","resumed":true}\n')
    make_old(path, 1800)
    nexus.stored.clear()  # a server that keeps every version answers 200 again
    result = run_cli(COMMAND, env=environment)
    assert result.returncode == 0, result.stderr
    assert f"main/{orphan} changed after it was uploaded" in result.stderr
    last = nexus.posts()[-1].body
    assert last is not None and last["fileName"] == orphan and last["transcript"].endswith('"resumed":true}\n')


@pytest.mark.parametrize(
    ("fault", "expected_status", "exit_code"),
    [(413, "rejected", 0), (400, "rejected", 0)],
)
def test_413_and_400_mark_rejected_without_retrying_every_run(
    tmp_path: Path, env: dict[str, str], nexus: NexusDouble, fault: int, expected_status: str, exit_code: int
) -> None:
    sessions = Path(env["OPENCLAW_STATE_DIR"]) / "agents" / "solo" / "sessions"
    sessions.mkdir(parents=True)
    name = f"{new_session_id()}.jsonl.reset.{STAMP}"
    (sessions / name).write_bytes(transcript("x"))
    environment = http_env(env, nexus, NEXUS_RETRIES="0")
    nexus.fail(ROUTE, fault)
    result = run_cli(COMMAND, "--agent", "solo", env=environment)
    assert result.returncode == exit_code, result.stderr
    assert f"solo/{name}: rejected" in result.stderr
    assert markers(env)["solo"][name]["status"] == expected_status
    assert run_cli(COMMAND, "--agent", "solo", env=environment).returncode == 0
    assert len(nexus.posts()) == 1, "a rejected file is not retried every run"
    status = json.loads((Path(env["NEXUS_STATE_DIR"]) / "session-upload.json").read_text())
    assert status["standing"]["rejected"] == 1
    listed = run_cli("nexus-jobs", "status", "--job", "session-upload", "--files", "rejected", env=environment)
    assert listed.returncode == 0, listed.stderr
    assert f"rejected: solo/{name}: " in listed.stdout and f"({fault})" in listed.stdout
    assert "1 file(s)" in listed.stdout
    retried = run_cli(COMMAND, "--agent", "solo", "--retry-rejected", env=environment)
    assert retried.returncode == 0 and len(nexus.posts()) == 2
    assert markers(env)["solo"][name]["status"] == "uploaded"
    cleared = run_cli("nexus-jobs", "status", "--job", "session-upload", "--files", "all", env=environment)
    assert "no rejected or conflicting files" in cleared.stdout


def test_an_endpoint_answering_404_is_a_wrong_path_exit_78_with_the_url(
    tree: Tree, env: dict[str, str], nexus: NexusDouble
) -> None:
    environment = http_env(env, nexus, NEXUS_ENDPOINT=nexus.url + "/wrong")
    result = run_cli(COMMAND, env=environment)
    assert_clean_failure(result, 78)
    assert f"Nexus at {nexus.url}/wrong/sessions answered 404 while uploading transcripts" in result.stderr
    assert "the part before /sessions" in result.stderr and "unexpected answer" not in result.stderr
    assert not list(Path(env["NEXUS_STATE_DIR"]).glob("session-upload.markers.*.done.json")), "no marker"
    assert run_cli(COMMAND, env=http_env(env, nexus)).returncode == 0, "nothing lost: all sent once it is right"
    assert {name for agent, name in nexus.stored if agent == "main"} == set(tree.expected_uploads)


def test_file_flag_forgets_one_marker_and_sends_only_that_file_again(
    tree: Tree, env: dict[str, str], nexus: NexusDouble
) -> None:
    environment = http_env(env, nexus)
    assert run_cli(COMMAND, env=environment).returncode == 0
    posts = len(nexus.posts())
    name = sorted(name for name in tree.expected_uploads if ".reset." in name)[0]
    late = f"{new_session_id()}.jsonl.deleted.{STAMP}"
    (tree.sessions_dir / late).write_bytes(transcript("late"))
    result = run_cli(COMMAND, "--agent", "main", "--file", name, env=environment)
    assert result.returncode == 0, result.stderr
    sent = [request.body["fileName"] for request in nexus.posts()[posts:] if request.body]
    assert sent == [name], "only that file, and the new one waits for the next run"
    assert markers(env)["main"][name]["status"] == "uploaded"
    assert late not in markers(env)["main"]
    for argv, words in (
        (["--file", name], "needs one --agent"),
        (["--agent", "main", "--file", "../x"], "needs one --agent"),
        (["--agent", "main", "--file", "nope.jsonl"], "no such file"),
    ):
        refused = run_cli(COMMAND, *argv, env=environment)
        assert_clean_failure(refused, 2)
        assert words in refused.stderr
    assert len(nexus.posts()) == posts + 1


def test_409_without_or_with_matching_sha256_marks_uploaded(
    tree: Tree, env: dict[str, str], nexus: NexusDouble
) -> None:
    environment = http_env(env, nexus)
    for agent_id, (file_name, content) in (("main", item) for item in tree.expected_uploads.items()):
        nexus.stored[(agent_id, file_name)] = content
    nexus.send_sha256_in_409 = len(tree.expected_uploads) % 2 == 0
    result = run_cli(COMMAND, "--json", env=environment)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["counts"]["alreadyStored"] == len(tree.expected_uploads)
    assert all(marker["status"] == "uploaded" for marker in markers(env)["main"].values())


def test_409_with_a_different_sha256_is_a_conflict_not_marked_uploaded(
    tree: Tree, env: dict[str, str], nexus: NexusDouble
) -> None:
    name = next(iter(tree.expected_uploads))
    nexus.stored[("main", name)] = b"other content\n"
    result = run_cli(COMMAND, env=http_env(env, nexus))
    assert_clean_failure(result, 1)
    assert f"main/{name}: conflict: the server holds different content" in result.stderr
    assert markers(env)["main"][name]["status"] == "conflict"
    listed = run_cli("nexus-jobs", "status", "--job", "session-upload", "--files", "conflicts", env=env)
    assert f"conflicts: main/{name}: " in listed.stdout and "different content" in listed.stdout


def test_transient_failures_are_retried_within_the_run(tree: Tree, env: dict[str, str], nexus: NexusDouble) -> None:
    nexus.fail(ROUTE, 503)
    nexus.fail(ROUTE, 429, headers={"Retry-After": "0"})
    nexus.reset(ROUTE)
    nexus.stall(ROUTE, 2.5)
    nexus.fail(ROUTE, 502)
    result = run_cli(
        COMMAND, "--concurrency", "1", env=http_env(env, nexus, NEXUS_TIMEOUT_SECONDS="1", NEXUS_RETRIES="5")
    )
    assert result.returncode == 0, result.stderr
    assert {name for (_, name) in nexus.stored} == set(tree.expected_uploads)


def test_backend_down_exits_69_and_leaves_everything_for_the_next_run(
    tree: Tree, env: dict[str, str], nexus: NexusDouble
) -> None:
    environment = http_env(env, nexus, NEXUS_RETRIES="1")
    nexus.fail(ROUTE, 503, times=None)
    result = run_cli(COMMAND, "--concurrency", "1", env=environment)
    assert_clean_failure(result, 69)
    assert "backend unavailable" in result.stderr
    assert not markers(env).get("main")
    nexus.heal()
    assert run_cli(COMMAND, env=environment).returncode == 0
    assert {name for (_, name) in nexus.stored} == set(tree.expected_uploads)


def test_unreachable_backend_exits_69(tree: Tree, env: dict[str, str]) -> None:
    environment = {
        **env,
        "NEXUS_ENDPOINT": "http://127.0.0.1:9",
        "NEXUS_API_KEY": "secret-key-value",
        "NEXUS_RETRIES": "0",
    }
    result = run_cli(COMMAND, env=environment)
    assert_clean_failure(result, 69)
    assert "connection refused" in result.stderr


def test_refused_key_exits_77_and_never_shows_the_key(tree: Tree, env: dict[str, str], nexus: NexusDouble) -> None:
    wrong = "wrong-" + nexus.api_key
    for mode in ("header", "query"):
        environment = {**env, "NEXUS_ENDPOINT": nexus.url, "NEXUS_API_KEY": wrong, "NEXUS_AUTH_MODE": mode}
        result = run_cli(COMMAND, "--debug", "--json", env=environment)
        assert_clean_failure(result, 77)
        assert "refused the API key" in result.stderr
        assert wrong not in result.stdout + result.stderr


def test_api_key_never_appears_even_with_debug(tree: Tree, env: dict[str, str], nexus: NexusDouble) -> None:
    nexus.fail(ROUTE, 503)
    nexus.reset(ROUTE)
    result = run_cli(COMMAND, "--debug", "--json", "-v", env=http_env(env, nexus, NEXUS_AUTH_MODE="query"))
    assert result.returncode == 0, result.stderr
    assert "POST /sessions" in result.stderr, "debug output shows the requests"
    assert nexus.api_key not in result.stdout + result.stderr


# --- state, locking, crashes ---------------------------------------------------------------


def test_state_files_are_private_and_versioned(tree: Tree, env: dict[str, str]) -> None:
    assert run_cli(COMMAND, env=env).returncode == 0
    state_dir = Path(env["NEXUS_STATE_DIR"])
    for path in state_dir.glob("session-upload*.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert json.loads(path.read_text())["version"] == 1
    name, content = next(iter(tree.expected_uploads.items()))
    marker = markers(env)["main"][name if (tree.sessions_dir / name).exists() else name + ".zst"]
    assert {"size", "mtimeNs", "status", "response", "at", "sha256"} <= set(marker)
    assert marker["sha256"] == hashlib.sha256(content).hexdigest()


def test_corrupt_state_file_is_moved_aside_and_the_run_goes_on(
    tree: Tree, env: dict[str, str], nexus: NexusDouble
) -> None:
    environment = http_env(env, nexus)
    assert run_cli(COMMAND, env=environment).returncode == 0
    state_dir = Path(env["NEXUS_STATE_DIR"])
    (state_dir / "session-upload.markers.json").write_text('{"version": 1, "agents": {"main": {')
    result = run_cli(COMMAND, env=environment)
    assert result.returncode == 0, result.stderr
    assert "was corrupt" in result.stderr and "recognised there (409)" in result.stderr
    assert list(state_dir.glob("session-upload.markers.json.corrupt-*"))
    assert all(request.status in (200, 409) for request in nexus.posts())
    assert len(markers(env)["main"]) == len(tree.expected_uploads)


@pytest.mark.parametrize("layout", ["agents", "destinations"])
def test_markers_of_the_single_document_layout_are_converted_once_and_nothing_is_sent_again(
    tree: Tree, env: dict[str, str], nexus: NexusDouble, layout: str
) -> None:
    environment = http_env(env, nexus)
    assert run_cli(COMMAND, env=environment).returncode == 0
    state_dir = Path(env["NEXUS_STATE_DIR"])
    before = markers(env)
    where = next(iter(json.loads((state_dir / "session-upload.markers.json").read_text())["destinations"]))
    for path in state_dir.glob("session-upload.markers.*"):
        path.unlink()
    # As a release before per-period files wrote it: every marker in one document.
    document = {"agents": before} if layout == "agents" else {"destinations": {where: {"agents": before}}}
    (state_dir / "session-upload.markers.json").write_text(json.dumps({"version": 1, **document}))
    posts = len(nexus.posts())
    for _ in range(2):
        result = run_cli(COMMAND, env=environment)
        assert result.returncode == 0, result.stderr
        assert len(nexus.posts()) == posts, "nothing is sent again"
    assert markers(env) == before
    converted = json.loads((state_dir / "session-upload.markers.json").read_text())["destinations"][where]
    shelved = [name for name in before["main"] if archived.keeps(name, before["main"][name])]
    assert shelved and not set(shelved) & set(converted["agents"]["main"])
    assert sum(converted["archived"]["main"].values()) == len(shelved)
    assert list(state_dir.glob("session-upload.markers.*.done.json"))


def test_corrupt_or_hostile_archive_marker_files_make_their_archives_due_again_and_nothing_else(
    tree: Tree, env: dict[str, str], nexus: NexusDouble
) -> None:
    environment = http_env(env, nexus)
    assert run_cli(COMMAND, env=environment).returncode == 0
    state_dir = Path(env["NEXUS_STATE_DIR"])
    done_files = sorted(state_dir.glob("session-upload.markers.*.done.json"))
    assert done_files
    for path, content in zip(done_files, ['{"names": [', '{"names": [7, null, {}]}', "[]"], strict=False):
        path.write_text(content)
        Path(str(path).replace(".done.json", ".json")).write_text('{"records": {"x": "not a list"}}')
    posts = len(nexus.posts())
    result = run_cli(COMMAND, env=environment)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert all(request.status == 409 for request in nexus.posts()[posts:]), "only re-offered, recognised"
    assert len(markers(env)["main"]) == len(tree.expected_uploads)
    again = len(nexus.posts())
    assert run_cli(COMMAND, env=environment).returncode == 0 and len(nexus.posts()) == again


def test_newer_state_version_is_refused_not_clobbered(tree: Tree, env: dict[str, str]) -> None:
    state_dir = Path(env["NEXUS_STATE_DIR"])
    state_dir.mkdir()
    (state_dir / "session-upload.markers.json").write_text('{"version": 99, "agents": {}}')
    result = run_cli(COMMAND, env=env)
    assert_clean_failure(result, 78)
    assert "newer nexus-jobs" in result.stderr
    assert json.loads((state_dir / "session-upload.markers.json").read_text())["version"] == 99


def test_ten_concurrent_invocations_one_uploads_the_rest_exit_75(
    tree: Tree, env: dict[str, str], nexus: NexusDouble
) -> None:
    nexus.delay_seconds = 0.4
    environment = http_env(env, nexus)
    processes = [
        subprocess.Popen(
            [script(COMMAND), "--concurrency", "1"],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(10)
    ]
    results = [(process.wait(timeout=60), *process.communicate()) for process in processes]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0] + [75] * 9, results
    assert all(err == "" for code, _, err in results if code == 75), "a skipped run is quiet without -v"
    assert len(nexus.posts()) == len(tree.expected_uploads), "exactly one run uploaded"
    verbose = run_cli(COMMAND, "-v", env=environment)
    assert verbose.returncode == 0


def test_lock_held_says_so_with_verbose(tree: Tree, env: dict[str, str]) -> None:
    import filelock

    state_dir = Path(env["NEXUS_STATE_DIR"])
    state_dir.mkdir()
    with filelock.FileLock(str(state_dir / "session-upload.lock")):
        result = run_cli(COMMAND, "-v", env=env)
    assert result.returncode == 75
    assert "already running" in result.stderr and "Traceback" not in result.stderr


def test_sigkill_at_random_moments_never_tears_state_and_loses_nothing(
    tmp_path: Path, env: dict[str, str], nexus: NexusDouble
) -> None:
    sessions = Path(env["OPENCLAW_STATE_DIR"]) / "agents" / "bulk" / "sessions"
    sessions.mkdir(parents=True)
    expected = {}
    rng = random.Random(7)
    for number in range(120):
        month = 4 + number % 3  # archives of three months: markers in three files per kind
        name = f"{new_session_id(rng)}.jsonl.reset.{STAMP.replace('-06-', f'-{month:02d}-')}"
        expected[name] = transcript(name[:36], messages=2 + number % 5, rng=rng)
        (sessions / name).write_bytes(expected[name])
    nexus.delay_seconds = 0.004
    environment = http_env(env, nexus)
    state_dir = Path(env["NEXUS_STATE_DIR"])
    for _ in range(50):
        process = subprocess.Popen(
            [script(COMMAND), "--agent", "bulk", "--concurrency", "4"],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.05, 0.6))
        process.send_signal(signal.SIGKILL)
        process.wait()
        for path in state_dir.glob("*.json"):
            json.loads(path.read_text())  # never torn
        if (state_dir / "session-upload.markers.json").exists():
            uploaded = {name for name, marker in markers(env).get("bulk", {}).items() if marker["status"] == "uploaded"}
            stored = {name for agent, name in nexus.stored if agent == "bulk"}
            assert uploaded <= stored, "never a marker of what the server does not have"
    final = run_cli(COMMAND, "--agent", "bulk", env=environment)
    assert final.returncode == 0, final.stderr
    assert {name: content for (agent, name), content in nexus.stored.items() if agent == "bulk"} == expected
    assert {name for name, marker in markers(env)["bulk"].items() if marker["status"] == "uploaded"} == set(expected)


# --- cron conventions ---------------------------------------------------------------------


def test_interval_minutes_makes_a_run_not_due_until_forced(tree: Tree, env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"jobs": [{"id": "uploads", "type": "session_upload", "intervalMinutes": 60, "config": {}}]})
    )
    environment = {**env, "NEXUS_JOBS_CONFIG": str(config)}
    assert run_cli(COMMAND, env=environment).returncode == 0
    new_name = f"{new_session_id()}.jsonl.deleted.{STAMP}"
    (tree.sessions_dir / new_name).write_bytes(transcript("late"))
    not_due = run_cli(COMMAND, "-v", env=environment)
    assert not_due.returncode == 0 and "not due until" in not_due.stderr
    inbox = Path(env["NEXUS_STATE_DIR"]) / "nexus-store" / "inbox" / "main"
    assert not (inbox / new_name).exists()
    assert run_cli(COMMAND, "--force", env=environment).returncode == 0
    assert (inbox / new_name).exists()


def test_disabled_job_does_not_run(tree: Tree, env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"jobs": [{"id": "uploads", "type": "session_upload", "enabled": False}]}))
    result = run_cli(COMMAND, "--config", str(config), env=env)
    assert result.returncode == 0 and result.stderr == ""
    assert not (Path(env["NEXUS_STATE_DIR"]) / "nexus-store").exists()


def test_dry_run_lists_and_changes_nothing(tree: Tree, env: dict[str, str]) -> None:
    result = run_cli(COMMAND, "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    *lines, total = result.stdout.splitlines()
    assert total == f"dry run: {len(lines)} item(s) would be handled; nothing was changed"
    listed = {line.split()[2].split("/", 1)[1] for line in lines}
    assert {name.removesuffix(".zst") for name in listed} == set(tree.expected_uploads)
    assert not Path(env["NEXUS_STATE_DIR"]).exists()


def test_json_summary(tree: Tree, env: dict[str, str]) -> None:
    result = run_cli(COMMAND, "--json", env=env)
    assert result.returncode == 0
    summary = json.loads(result.stdout)
    assert summary["job"] == "session-upload" and summary["exitCode"] == 0
    assert summary["counts"]["uploaded"] == len(tree.expected_uploads)
    assert summary["counts"]["waiting"] == len(tree.held_back)
    assert summary["details"]["store"].endswith("nexus-store/inbox") and summary["durationSeconds"] >= 0


def test_file_endpoint_stores_in_that_directory(tree: Tree, env: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "shared-store"
    result = run_cli(COMMAND, "-v", env={**env, "NEXUS_ENDPOINT": f"file://{target}"})
    assert result.returncode == 0, result.stderr
    assert f"to {target}/inbox" in result.stderr
    assert {path.name for path in (target / "inbox" / "main").iterdir()} == set(tree.expected_uploads)


def test_markers_of_deleted_files_are_pruned_after_retention(tree: Tree, env: dict[str, str], tmp_path: Path) -> None:
    assert run_cli(COMMAND, env=env).returncode == 0
    gone = next(iter(tree.expected_uploads))
    (tree.sessions_dir / (gone if (tree.sessions_dir / gone).exists() else gone + ".zst")).unlink()
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"jobs": [{"id": "session-upload", "type": "session_upload", "config": {"retentionDays": 0}}]})
    )
    environment = {**env, "NEXUS_JOBS_CONFIG": str(config)}
    assert run_cli(COMMAND, env=environment).returncode == 0
    assert run_cli(COMMAND, env=environment).returncode == 0
    assert gone not in markers(env)["main"] and gone + ".zst" not in markers(env)["main"]
    assert len(markers(env)["main"]) == len(tree.expected_uploads) - 1


# --- bad input ----------------------------------------------------------------------------


def test_symlink_leading_out_of_the_sessions_directory_is_refused(
    tree: Tree, env: dict[str, str], tmp_path: Path
) -> None:
    secret = tmp_path / "outside.txt"
    secret.write_text('{"not": "a transcript"}\n')
    link = tree.sessions_dir / f"{new_session_id()}.jsonl.reset.{STAMP}"
    link.symlink_to(secret)
    result = run_cli(COMMAND, env=env)
    assert result.returncode == 0, result.stderr
    assert f"main/{link.name}: rejected: is a symbolic link" in result.stderr
    assert not (Path(env["NEXUS_STATE_DIR"]) / "nexus-store" / "inbox" / "main" / link.name).exists()


def test_huge_and_non_utf8_transcripts_are_rejected_locally(env: dict[str, str], nexus: NexusDouble) -> None:
    sessions = Path(env["OPENCLAW_STATE_DIR"]) / "agents" / "bad" / "sessions"
    sessions.mkdir(parents=True)
    huge = f"{new_session_id()}.jsonl.reset.{STAMP}"
    (sessions / huge).write_bytes(transcript("huge", pad_to=LIMIT_BYTES + 10))
    latin = f"{new_session_id()}.jsonl.deleted.{STAMP}"
    (sessions / latin).write_bytes(b'{"type":"session","text":"caf\xe9"}\n')
    result = run_cli(COMMAND, "--agent", "bad", env=http_env(env, nexus))
    assert result.returncode == 0, result.stderr
    assert f"bad/{huge}: rejected: larger than the limit of {LIMIT_BYTES} bytes" in result.stderr
    assert f"bad/{latin}: rejected: not UTF-8 text (invalid byte at offset 29)" in result.stderr
    assert nexus.posts() == [], "nothing is sent that the server would refuse"


def test_fifo_and_corrupt_zst_are_rejected_without_hanging(env: dict[str, str]) -> None:
    sessions = Path(env["OPENCLAW_STATE_DIR"]) / "agents" / "odd" / "sessions"
    sessions.mkdir(parents=True)
    os.mkfifo(sessions / f"{new_session_id()}.jsonl.reset.{STAMP}")
    (sessions / f"{new_session_id()}.jsonl.reset.{STAMP}.zst").write_bytes(b"not zstd at all")
    result = run_cli(COMMAND, "--agent", "odd", env=env, timeout_seconds=20)
    assert result.returncode == 0, result.stderr
    assert "rejected: not a regular file" in result.stderr
    assert "rejected: not a valid zstd archive" in result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"jobs": [', "line 1 column 11: invalid JSON"),
        ('{"nexus": {"endpoint": 5}, "colour": 1}', "colour: unknown key"),
        (
            '{"jobs": [{"id": "u", "type": "session_upload", "config": {"graceMinutes": "ten", "colour": 1}}]}',
            "jobs[0].config.graceMinutes: expected a number from 0 to 1,000,000,000, got 'ten'",
        ),
        ('{"jobs": [{"id": "u", "type": "nonsense"}]}', "jobs[0].type: expected one of"),
        ('{"agents": {"main": {"sessionsDir": 7}}}', "agents.main.sessionsDir: expected a path string"),
        ("[1, 2]", "expected a JSON object at the top level"),
    ],
)
def test_bad_config_is_one_clear_error_per_problem_exit_78(
    env: dict[str, str], tmp_path: Path, content: str, expected: str
) -> None:
    config = tmp_path / "config.json"
    config.write_text(content)
    result = run_cli(COMMAND, "--config", str(config), env=env)
    assert_clean_failure(result, 78)
    assert expected in result.stderr and str(config) in result.stderr


def test_all_config_problems_are_reported_together(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        '{"jobs": [{"id": "u", "type": "session_upload", '
        '"config": {"graceMinutes": -1, "concurrency": 0, "colour": 1}}]}'
    )
    result = run_cli(COMMAND, "--config", str(config), env=env)
    assert_clean_failure(result, 78)
    assert len(result.stderr.strip().splitlines()) == 3
    for key in ("graceMinutes", "concurrency", "colour"):
        assert f"jobs[0].config.{key}" in result.stderr


def test_bad_environment_value_names_the_variable(env: dict[str, str]) -> None:
    result = run_cli(COMMAND, env={**env, "NEXUS_AUTH_MODE": "cookie", "NEXUS_ENDPOINT": "ftp://x"})
    assert_clean_failure(result, 78)
    assert "environment variable NEXUS_AUTH_MODE: expected one of 'header', 'query'" in result.stderr


@pytest.mark.parametrize(
    ("args", "exit_code", "expected"),
    [
        (["--concurrency", "0"], 78, "--concurrency: expected a whole number from 1 to 64"),
        (["--agent", "nobody"], 2, "unknown agent 'nobody' (known: main)"),
        (["--no-such-flag"], 2, "unrecognized arguments"),
        (["--config", "/nonexistent/config.json"], 78, "config file not found"),
        (["--endpoint", "gopher://x"], 78, "expected an http(s):// URL, file:///dir or 'embedded'"),
    ],
)
def test_bad_flags(env: dict[str, str], args: list[str], exit_code: int, expected: str) -> None:
    result = run_cli(COMMAND, *args, env=env)
    assert_clean_failure(result, exit_code)
    assert expected in result.stderr


def test_missing_sessions_directory_of_a_configured_agent(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"agents": {"ghost": {"sessionsDir": str(tmp_path / "missing")}}}))
    result = run_cli(COMMAND, "--config", str(config), env=env)
    assert_clean_failure(result, 1)
    assert f"agent ghost: cannot list {tmp_path / 'missing'}: No such file or directory" in result.stderr


def test_state_directory_that_cannot_be_created(tree: Tree, env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_cli(COMMAND, env={**env, "NEXUS_STATE_DIR": str(blocker / "state")})
    assert_clean_failure(result, 73)  # EX_CANTCREAT, with the path
    assert "file/state" in result.stderr and "Not a directory" in result.stderr


# --- the JSON body ------------------------------------------------------------------------


def test_json_string_escaping_round_trips_any_utf8() -> None:
    rng = random.Random(3)
    alphabet = ['"', "\\", "\n", "\r", "\t", "\x00", "\x1f", "\x7f", "a", "é", "☕", "🚀", "\u2028", "/"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        encoded = b'"' + json_string(text.encode()) + b'"'
        assert json.loads(encoded) == text


def without_root_privileges(command: list[str]) -> list[str]:
    """Root reads any file; drop the capabilities that let it, so permissions apply."""
    if os.geteuid() != 0:
        return command
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", *command]


def test_unreadable_files_fail_alone_and_are_retried(tree: Tree, env: dict[str, str]) -> None:
    blocked = next(name for name in tree.expected_uploads if ".reset." in name)
    (tree.sessions_dir / blocked).chmod(0)
    command = without_root_privileges([script(COMMAND)])
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert_clean_failure(result, 1)
    assert f"main/{blocked}: upload failed: cannot read it: Permission denied (will retry next run)" in result.stderr
    inbox = Path(env["NEXUS_STATE_DIR"]) / "nexus-store" / "inbox" / "main"
    assert {path.name for path in inbox.iterdir()} == set(tree.expected_uploads) - {blocked}
    (tree.sessions_dir / blocked).chmod(0o644)
    assert run_cli(COMMAND, env=env).returncode == 0
    assert (inbox / blocked).read_bytes() == tree.expected_uploads[blocked]


def test_unlistable_sessions_directory_is_one_clear_error(tree: Tree, env: dict[str, str]) -> None:
    tree.sessions_dir.chmod(0)
    try:
        command = without_root_privileges([script(COMMAND)])
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    finally:
        tree.sessions_dir.chmod(0o755)
    assert_clean_failure(result, 1)
    assert f"agent main: cannot list {tree.sessions_dir}: Permission denied" in result.stderr


def test_retry_after_is_honoured(env: dict[str, str], nexus: NexusDouble) -> None:
    sessions = Path(env["OPENCLAW_STATE_DIR"]) / "agents" / "one" / "sessions"
    sessions.mkdir(parents=True)
    (sessions / f"{new_session_id()}.jsonl.reset.{STAMP}").write_bytes(transcript("one"))
    nexus.fail(ROUTE, 503, headers={"Retry-After": "2"})
    started = time.monotonic()
    result = run_cli(COMMAND, "--agent", "one", env=http_env(env, nexus))
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 2.0, "the retry waited for Retry-After"
    assert len(nexus.posts()) == 2


def test_progress_bar_only_on_a_terminal(tree: Tree, env: dict[str, str]) -> None:
    # script(1) gives the command a pseudo-terminal, as an operator's shell does.
    on_terminal = subprocess.run(
        ["script", "-qec", script(COMMAND), "/dev/null"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert on_terminal.returncode == 0, on_terminal.stdout
    assert "uploading" in on_terminal.stdout and "file" in on_terminal.stdout
    (Path(env["NEXUS_STATE_DIR"])).rename(Path(env["NEXUS_STATE_DIR"] + "-first"))
    under_cron = run_cli(COMMAND, env=env)
    assert under_cron.returncode == 0 and under_cron.stderr == "" and under_cron.stdout == ""


def test_large_zst_archives_decompress_whole_and_oversize_ones_are_rejected(env: dict[str, str]) -> None:

    sessions = Path(env["OPENCLAW_STATE_DIR"]) / "agents" / "zst" / "sessions"
    sessions.mkdir(parents=True)
    big = transcript("big", pad_to=3_000_000)
    big_name = f"{new_session_id()}.jsonl.deleted.{STAMP}"
    (sessions / f"{big_name}.zst").write_bytes(node_zstd(big))
    bomb_name = f"{new_session_id()}.jsonl.deleted.{STAMP}"
    (sessions / f"{bomb_name}.zst").write_bytes(node_zstd(b"x" * (LIMIT_BYTES + 1)))
    result = run_cli(COMMAND, "--agent", "zst", env=env)
    assert result.returncode == 0, result.stderr
    inbox = Path(env["NEXUS_STATE_DIR"]) / "nexus-store" / "inbox" / "zst"
    assert (inbox / big_name).read_bytes() == big
    assert not (inbox / bomb_name).exists()
    assert f"zst/{bomb_name}.zst: rejected: larger than the limit" in result.stderr
