"""The MQTT v5 connection of ``mqtt-job-worker``: persistent session, one pointer in flight
at a time (receive maximum 1), manual acknowledgement (paho-mqtt 2), results published at QoS 1
and waited for. Single-threaded: the network loop runs whenever the worker calls ``service``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from ..core.errors import AuthError, BackendUnavailable, ConfigError
from .settings import Settings

log = logging.getLogger("nexus_jobs.mqtt_worker")

KEEPALIVE_SECONDS = 30
PUBLISH_ACK_DEADLINE_SECONDS = 30.0
DISCONNECT_DEADLINE_SECONDS = 5.0
WAIT_SLICE_SECONDS = 0.25


class BrokerSession:
    """The worker's MQTT v5 connection: persistent session, one pointer in flight at a time,
    manual acknowledgement. Single-threaded: the network loop runs in ``service``."""

    def __init__(self, settings: Settings) -> None:
        import paho.mqtt.client as mqtt

        self.settings = settings
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=settings.worker_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        if settings.username:
            self.client.username_pw_set(settings.username, settings.password)
        if settings.tls:
            self.client.tls_set(ca_certs=settings.ca_file)
        # Settable before the first connection only; the retries of open() bound the total.
        self.client.connect_timeout = min(5.0, settings.connect_timeout_seconds)
        self.messages: list[Any] = []
        self.connected = False
        self.connack: Any = None
        self.granted: list[Any] | None = None
        self.publish_reasons: dict[int, Any] = {}
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connack = reason
        self.connected = not reason.is_failure
        if self.connected and not flags.session_present:
            log.info(
                "the broker had no session for %s: pointers published before now were not queued for it",
                self.settings.worker_id,
            )

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected = False

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: list[Any], properties: Any) -> None:
        self.granted = reasons

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self.publish_reasons[mid] = reason

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        # Only the first pointer is handled. Any other one (there should be none with a
        # receive maximum of 1) stays unacknowledged, so the broker redelivers it later.
        self.messages.append(message)

    def open(self) -> None:
        """Connect (retrying until the connect timeout) and subscribe."""
        deadline = time.monotonic() + self.settings.connect_timeout_seconds
        delay, last_problem = 0.1, ""
        while True:
            try:
                self._connect_once(deadline)
                break
            except (OSError, TimeoutError) as error:
                last_problem = str(error) or type(error).__name__
            if time.monotonic() + delay > deadline:
                raise BackendUnavailable(
                    f"broker {self.settings.broker} unreachable for "
                    f"{self.settings.connect_timeout_seconds:g} s: {last_problem}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        self._subscribe(deadline=time.monotonic() + self.settings.connect_timeout_seconds)

    def _connect_once(self, deadline: float) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.settings.session_expiry_seconds
        properties.ReceiveMaximum = 1  # one pointer in flight; the rest wait in the broker
        self.connack = None
        self.client.connect(
            self.settings.host, self.settings.port, KEEPALIVE_SECONDS, clean_start=False, properties=properties
        )
        while self.connack is None:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer to CONNECT")
            if self.client.loop(0.05) != 0 and self.connack is None:
                raise ConnectionError("connection closed by the broker")
        reason = self.connack
        if not reason.is_failure:
            return
        if reason.value in (0x86, 0x87, 0x8C):  # bad user name or password, not authorized, bad auth method
            raise AuthError(f"broker {self.settings.broker} refused the connection: {reason}")
        if reason.value == 0x85:
            raise ConfigError(f"WORKER_ID: broker {self.settings.broker} refused the client id: {reason}")
        raise BackendUnavailable(f"broker {self.settings.broker} refused the connection: {reason}")

    def _subscribe(self, *, deadline: float) -> None:
        from paho.mqtt.subscribeoptions import SubscribeOptions

        # Retained pointers are delivered at the first subscription only, not at every start.
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        self.granted = None
        self.client.subscribe(self.settings.subscribe_topic, options=options)
        self._wait(lambda: self.granted is not None, deadline=deadline, what="the subscription")
        assert self.granted is not None
        reason = self.granted[0]
        if reason.is_failure:
            if reason.value == 0x87:
                raise AuthError(f"broker refused the subscription to {self.settings.subscribe_topic}: {reason}")
            raise BackendUnavailable(f"broker refused the subscription to {self.settings.subscribe_topic}: {reason}")
        if reason.value < 1:
            log.warning(
                "broker granted QoS %d only on %s: pointers may be lost", reason.value, self.settings.subscribe_topic
            )

    def _wait(self, done: Callable[[], bool], *, deadline: float, what: str) -> None:
        while not done():
            if not self.connected:
                raise BackendUnavailable(f"lost the connection to {self.settings.broker} waiting for {what}")
            if time.monotonic() > deadline:
                raise BackendUnavailable(f"broker {self.settings.broker} did not confirm {what} in time")
            self.client.loop(0.05)

    def service(self, seconds: float) -> None:
        """Run the network loop (keepalive, acknowledgements) for up to ``seconds``."""
        if self.connected:
            self.client.loop(seconds)
        elif seconds:
            time.sleep(seconds)

    def _reopen_if_lost(self) -> None:
        if not self.connected:
            log.warning("lost the connection to %s; reconnecting (the session resumes)", self.settings.broker)
            self.open()

    def next_message(self, *, deadline: float | None, stop: Callable[[], bool]) -> Any:
        while not self.messages:
            if stop():
                return None
            remaining = WAIT_SLICE_SECONDS if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._reopen_if_lost()
            self.service(min(WAIT_SLICE_SECONDS, remaining))
        return self.messages[0]

    def publish(self, topic: str, document: dict[str, Any]) -> None:
        self._reopen_if_lost()
        info = self.client.publish(topic, json.dumps(document, ensure_ascii=False).encode("utf-8"), qos=1)
        deadline = time.monotonic() + PUBLISH_ACK_DEADLINE_SECONDS
        try:
            while not info.is_published():
                if time.monotonic() > deadline:
                    raise BackendUnavailable(
                        f"broker {self.settings.broker} did not acknowledge the result on {topic}"
                        "; the pointer stays queued and the result is re-published next start"
                    )
                self._reopen_if_lost()
                self.service(0.05)
        except (RuntimeError, ValueError) as error:
            raise BackendUnavailable(f"cannot publish the result on {topic}: {error}") from None
        reason = self.publish_reasons.pop(info.mid, None)
        if reason is not None and reason.is_failure:
            raise BackendUnavailable(f"broker refused the result on {topic}: {reason}")

    def ack(self, message: Any) -> None:
        self.client.ack(message.mid, message.qos)
        deadline = time.monotonic() + DISCONNECT_DEADLINE_SECONDS
        while self.connected and self.client.want_write() and time.monotonic() < deadline:
            self.client.loop(0.01)

    def close(self) -> None:
        """Disconnect normally: the broker keeps the session, with any pointer not acknowledged."""
        if not self.connected:
            return
        self.client.disconnect()
        deadline = time.monotonic() + DISCONNECT_DEADLINE_SECONDS
        while self.connected and time.monotonic() < deadline:
            self.client.loop(0.01)
