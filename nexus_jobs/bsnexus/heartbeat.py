"""The heartbeat thread of ``run``: tells the backend the worker lives (also during a long
task), keeps the running task's Redis entry fresh, and handles refused credentials.

On 401/404 it re-registers when a registration token is available (keeping the identity),
else it stops the run, which then exits 77 saying to run ``register`` again. An unreachable
server is retried every interval and reported once per outage; tasks go on meanwhile.
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
from .worker import InFlight, Stop

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
        in_flight: InFlight,
    ) -> None:
        super().__init__(name="bsnexus-heartbeat", daemon=True)
        self.settings = settings
        self.session = session
        self.client = client
        self.stop = stop
        self.tally = tally
        self.in_flight = in_flight
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
        self.join(timeout=CLOSE_WAIT_SECONDS)

    def beat(self) -> None:
        try:
            registration.heartbeat(self.session, self.settings, worker_id=self.worker_id, token=self.token)
        except registration.CredentialsRefused as refused:
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
        if self.server_down_since is not None:
            log.warning("the BSNexus server answers heartbeats again")
            self.server_down_since = None
        self.tally.heartbeat("ok")

    def credentials_refused(self, refused: registration.CredentialsRefused) -> None:
        what = "token" if refused.status in (401, 403) else "worker id"
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
        if not self.settings.registration_token:
            message = (
                f"the BSNexus server refused worker {self.worker_id} (heartbeat HTTP {refused.status}: "
                f"{refused.detail or f'unknown {what}'}); run `bsnexus-worker register` again"
            )
            self.stop.request(f"server refused the worker's {what}", error=AuthError(message))
            return
        log.warning("heartbeat refused (HTTP %s: %s); re-registering", refused.status, refused.detail or what)
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
                    f"the server had forgotten worker {self.worker_id}; registered as {answer.worker_id} "
                    "(saved); start the worker again to use it"
                ),
            )
            return
        self.token = answer.token
        self.tally.heartbeat("re-registered")
        log.warning("re-registered worker %s; credentials saved to %s", self.worker_id, self.settings.env_file)

    def keep_task_fresh(self) -> None:
        delivery = self.in_flight.delivery
        if delivery is None:
            return
        try:
            streams.keep_fresh(self.client, delivery, consumer=self.worker_id)
        except Exception as error:  # Redis away: the main loop reports and reconnects
            log.debug("could not refresh message %s: %s", delivery.message_id, error)
