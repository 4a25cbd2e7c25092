"""The heartbeat thread of ``run`` and the worker's standing with the backend.

It tells the backend the worker lives (also during a long task), keeps the running task's
Redis entry fresh, and re-registers under the saved id whenever the backend has forgotten
the worker: its registry hash expired (heartbeat 404), its token expired after 24 h (401),
or ``run`` starts after a gap (no hash). Without a registration token the run stops and
exits 77 saying to run ``register`` again. An unreachable server is retried every interval
and reported once per outage, with one line when it answers again; tasks go on meanwhile.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import TYPE_CHECKING

from ..core.errors import AuthError, BackendUnavailable, JobError, TransientError
from ..core.secrets import register_secret
from . import registration, streams
from .record import Tally
from .settings import Settings
from .worker import Stop, Worker

if TYPE_CHECKING:
    import redis
    import requests

log = logging.getLogger("nexus_jobs.bsnexus")

CLOSE_WAIT_SECONDS = 5.0


class Heartbeat(threading.Thread):
    def __init__(
        self,
        *,
        settings: Settings,
        session: requests.Session,
        client: redis.Redis,
        stop: Stop,
        tally: Tally,
        worker: Worker,
    ) -> None:
        super().__init__(name="bsnexus-heartbeat", daemon=True)
        self.settings = settings
        # No retries inside a beat: the next beat is the retry (one line per outage).
        self.beat_session = registration.make_session(settings, retries=0)
        self.session = session
        self.client = client
        self.stop = stop
        self.tally = tally
        self.worker = worker
        self.worker_id = settings.worker_id
        self.token = settings.worker_token
        self.halt = threading.Event()
        self.server_down_since: float | None = None
        # Wake often enough to refresh a running task's entry well within the visibility timeout.
        self.tick_seconds = max(0.02, min(settings.heartbeat_interval_seconds, settings.visibility_timeout_seconds / 3))

    def run(self) -> None:
        next_beat = 0.0
        while not self.halt.is_set():
            try:
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.settings.heartbeat_interval_seconds
                    self.beat()
                self.keep_task_fresh()
            except Exception as error:  # a bug here must not silently end the heartbeats
                log.error("heartbeat: unexpected %s: %s", type(error).__name__, error)
            self.halt.wait(self.tick_seconds)

    def close(self) -> None:
        self.halt.set()
        # A daemon thread: a heartbeat stuck on a slow server must not hold up the stop.
        if self.is_alive():
            self.join(timeout=CLOSE_WAIT_SECONDS)

    def register_if_forgotten(self) -> None:
        """At start: re-register when the backend's registry no longer lists the worker (a
        gap longer than its 90 s TTL since the last heartbeat, or a DELETE at the last stop)."""
        try:
            if streams.registered(self.client, self.worker_id):
                return
        except streams.down_errors() + streams.response_errors():
            return  # Redis away: the loop reports it; the first heartbeat finds out instead
        self.reregister("the backend's registry does not list it")

    def deregister(self) -> None:
        """At stop: the backend must not schedule onto a worker that is gone."""
        try:
            registration.deregister(self.beat_session, self.settings, worker_id=self.worker_id)
        except JobError as error:
            log.warning("could not deregister worker %s at stop: %s", self.worker_id, error)
            return
        finally:
            self.beat_session.close()
        log.info("deregistered worker %s", self.worker_id)

    def beat(self) -> None:
        try:
            registration.heartbeat(self.beat_session, self.settings, worker_id=self.worker_id, token=self.token)
        except registration.CredentialsRefused as refused:
            self.server_answers()
            self.tally.heartbeat(f"refused: HTTP {refused.status}")
            self.credentials_refused(refused)
            return
        except BackendUnavailable as error:
            self.tally.heartbeat(f"failed: {error}")
            if self.server_down_since is None:
                self.server_down_since = time.monotonic()
                log.warning(
                    "heartbeat failed: %s; tasks go on, retrying every %g s",
                    error,
                    self.settings.heartbeat_interval_seconds,
                )
            return
        self.server_answers()
        self.tally.heartbeat("ok")

    def server_answers(self) -> None:
        if self.server_down_since is not None:
            log.warning(
                "the BSNexus server answers heartbeats again after %.1f s", time.monotonic() - self.server_down_since
            )
            self.server_down_since = None

    def credentials_refused(self, refused: registration.CredentialsRefused) -> None:
        saved = registration.saved_token(self.settings.env_file, worker_id=self.worker_id)
        if saved and saved != self.token:
            # `register` was run again while this worker ran: the server issued a new token.
            register_secret(saved)
            self.token = saved
            log.warning(
                "heartbeat refused (HTTP %s); using the token saved since in %s", refused.status, self.settings.env_file
            )
            self.beat()
            return
        self.reregister(f"heartbeat HTTP {refused.status}: {refused.detail or 'refused'}")

    def reregister(self, why: str) -> None:
        """Register again under the saved id; stop the run when that cannot be done."""
        if not self.settings.registration_token:
            message = (
                f"the BSNexus server has forgotten worker {self.worker_id} ({why}) and no registration token "
                "is available (BSNEXUS_REGISTRATION_TOKEN); run `bsnexus-worker register` again"
            )
            self.stop.request("the server forgot the worker", error=AuthError(message))
            return
        log.warning("the BSNexus server has forgotten worker %s (%s); re-registering", self.worker_id, why)
        current = dataclasses.replace(self.settings, worker_id=self.worker_id, worker_token=self.token)
        try:
            answer = registration.register(self.session, current)
            if answer.worker_id != self.worker_id:
                registration.save_identity(self.settings.env_file, current, answer)
            else:
                registration.save_token(self.settings.env_file, answer.token)
        except JobError as error:
            self.stop.request(
                "re-registration failed",
                error=AuthError(f"re-registration failed: {error}") if isinstance(error, AuthError) else error,
            )
            return
        if answer.worker_id != self.worker_id:
            # Consumer name and lock follow the identity: a new one needs a new run.
            self.stop.request(
                "registered as a new worker",
                error=TransientError(
                    f"the server had lost worker {self.worker_id}; registered as {answer.worker_id} "
                    "(saved); start the worker again to use it"
                ),
            )
            return
        self.token = answer.token
        self.tally.heartbeat("re-registered")
        log.warning("re-registered worker %s; credentials saved to %s", self.worker_id, self.settings.env_file)

    def keep_task_fresh(self) -> None:
        delivery = self.worker.in_flight
        if delivery is None:
            return
        try:
            owned = streams.keep_fresh(self.client, delivery, consumer=self.worker_id)
        except Exception as error:  # Redis away: the main loop reports and reconnects
            log.debug("could not refresh message %s: %s", delivery.message_id, error)
            return
        if not owned and self.worker.taken_over != delivery.message_id:
            self.worker.taken_over = delivery.message_id
            log.warning(
                "message %s was claimed by another worker while this one ran it (the backend had "
                "forgotten this worker); its entry is left to that worker",
                delivery.message_id,
            )
