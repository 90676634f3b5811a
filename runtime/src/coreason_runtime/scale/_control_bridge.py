"""Controls across machines: one runtime's intents reach every runtime of a deployment.

A :class:`ControlBridge` joins a runtime's :class:`~coreason_runtime.Controls` to a Redis
pub/sub channel per deployment. An intent given locally (``rt.controls.pause(wf)`` in a
notebook, a dashboard button) is published; an intent published by another member is applied
to the local controls, so a worker decoding that workflow parks at its next layer boundary or
metered chunk exactly as if the intent had been given on that worker. The last intent per
workflow is also kept in a hash, so a worker that takes a request later (a retry after a
crash, a request still queued) still finds it paused, or aborted (:meth:`aborted_since`).

Members may also forward their events: a worker publishes what happens on its bus, and a
notebook's bridge republishes them on the notebook's bus (source ``"<worker>/<source>"``), so
the dashboard shows remote decodes, charges, suspensions and workers as if they were local.
``Controls`` itself knows nothing of this: the bridge listens to its ``workflow.*`` events and
calls its intents.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from coreason_runtime._controls import ControlState
from coreason_runtime._events import Event, EventType
from coreason_runtime._exceptions import MissingExtraError

if TYPE_CHECKING:
    from coreason_runtime._controls import Controls
    from coreason_runtime._events import EventBus, Subscription

__all__ = ["INTENT_OF", "ControlBridge", "deployment_prefix"]

logger = logging.getLogger("coreason_runtime.scale")

# the intent behind each control event (a test checks that every intent travels)
INTENT_OF: dict[EventType, str] = {
    EventType.WORKFLOW_PAUSED: "pause",
    EventType.WORKFLOW_RESUMED: "resume",
    EventType.WORKFLOW_PREEMPTED: "preempt",
    EventType.WORKFLOW_ABORTED: "abort",
}
_HOLDS = {"pause": ControlState.PAUSED, "preempt": ControlState.PREEMPTED}
_RECONNECT_S = 0.5


def deployment_prefix(deployment: str) -> str:
    """The Redis key prefix of one deployment (its channels, control states, workers)."""
    return f"coreason:{deployment}"


class ControlBridge:
    """Joins ``controls`` (and ``bus``) to the other members of a deployment through Redis.

    Parameters
    ----------
    controls, bus:
        The local runtime's controls and event bus (``rt.controls``, ``rt.bus``).
    redis_url:
        The deployment's Redis.
    deployment:
        Members of one deployment share intents; another deployment on the same Redis is apart.
    member:
        This member's name (a worker's name, ``"notebook"``), in published messages.
    forward_events:
        Publish this bus's events for other members (workers do).
    receive_events:
        Republish other members' events on this bus (a notebook's dashboard does).
    """

    def __init__(
        self,
        controls: Controls,
        bus: EventBus,
        redis_url: str,
        *,
        deployment: str = "default",
        member: str | None = None,
        forward_events: bool = False,
        receive_events: bool = False,
    ) -> None:
        try:
            import redis
        except ImportError as e:
            raise MissingExtraError("redis", "redis") from e
        self._redis_mod = redis
        self.controls = controls
        self.bus = bus
        self.redis_url = redis_url
        self.member = member or f"member-{uuid.uuid4().hex[:8]}"
        self.prefix = deployment_prefix(deployment)
        self.forward_events = forward_events
        self.receive_events = receive_events
        # Any: decoded replies are str, which redis' stubs cannot tell from bytes
        self._r: Any = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5.0)
        self._outbox: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._local = threading.local()  # set while applying what another member sent
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._subs: list[Subscription] = []
        self.received = 0

    # --- channels and keys ---------------------------------------------------------------------

    @property
    def intents_channel(self) -> str:
        return f"{self.prefix}:intents"

    @property
    def events_channel(self) -> str:
        return f"{self.prefix}:events"

    @property
    def states_key(self) -> str:
        return f"{self.prefix}:controls"

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> ControlBridge:
        """Subscribe and start relaying; returns once the subscription is live."""
        self._subs.append(self.bus.subscribe(self._on_local_intent, "workflow"))
        if self.forward_events:
            self._subs.append(self.bus.subscribe(self._on_local_event))
        for target, name in ((self._listen, "listen"), (self._send, "send")):
            thread = threading.Thread(target=target, name=f"coreason-bridge-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if not self._subscribed.wait(timeout):
            logger.warning("control bridge %r: Redis not reachable yet; retrying", self.member)
        return self

    def close(self) -> None:
        """Stop relaying (what is queued is sent first). Idempotent."""
        if self._stop.is_set():
            return
        for sub in self._subs:
            sub.unsubscribe()
        self._outbox.put(None)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._r.close()

    def __enter__(self) -> ControlBridge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- outgoing ------------------------------------------------------------------------------

    @property
    def _relaying(self) -> str | None:
        """What this thread is relaying from another member: ``"intent"``, ``"event"``, None."""
        mode = getattr(self._local, "relaying", None)
        return mode if isinstance(mode, str) else None

    @contextmanager
    def _from_remote(self, kind: str) -> Iterator[None]:
        self._local.relaying = kind
        try:
            yield
        finally:
            self._local.relaying = None

    def _on_local_intent(self, event: Event) -> None:
        intent = INTENT_OF.get(event.type)
        if intent is None or self._relaying or event.source != "controls" or not event.workflow_id:
            return
        reason = getattr(event.data, "reason", None)
        message = {
            "id": uuid.uuid4().hex,
            "intent": intent,
            "workflow_id": event.workflow_id,
            "reason": reason,
            "origin": self.member,
            "ts": time.time(),
        }
        self._outbox.put((self.intents_channel, json.dumps(message)))

    def _on_local_event(self, event: Event) -> None:
        mode = self._relaying
        if mode == "event" or (mode == "intent" and event.type in INTENT_OF):
            return  # it came from another member: never echo it back
        # what applying a remote intent caused here (a decode parked at once) is this member's
        body = {"origin": self.member, "event": event.model_dump(mode="json")}
        self._outbox.put((self.events_channel, json.dumps(body)))

    def _send(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            channel, body = item
            try:
                if channel == self.intents_channel:
                    message = json.loads(body)
                    pipe = self._r.pipeline(transaction=True)
                    pipe.hset(self.states_key, message["workflow_id"], body)
                    pipe.publish(channel, body)
                    pipe.execute()
                else:
                    self._r.publish(channel, body)
            except self._redis_mod.RedisError:
                logger.warning("control bridge %r could not publish to %s", self.member, channel)

    # --- incoming ------------------------------------------------------------------------------

    def _listen(self) -> None:
        while not self._stop.is_set():
            pubsub = self._r.pubsub(ignore_subscribe_messages=True)
            try:
                channels = [self.intents_channel]
                if self.receive_events:
                    channels.append(self.events_channel)
                pubsub.subscribe(*channels)
                self.sync_all()  # intents published while this member was not listening
                self._subscribed.set()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is not None:
                        self._dispatch(message["channel"], message["data"])
            except self._redis_mod.RedisError:
                self._subscribed.clear()
                logger.info("control bridge %r lost Redis; reconnecting", self.member)
                self._stop.wait(_RECONNECT_S)
            finally:
                pubsub.close()

    def _dispatch(self, channel: str, data: str) -> None:
        try:
            body = json.loads(data)
            if body.get("origin") == self.member:
                return
            if channel == self.intents_channel:
                self._apply(body)
            else:
                self._republish(body)
        except Exception:  # one bad message must not stop the bridge
            logger.exception("control bridge %r could not handle a message", self.member)

    def _apply(self, message: dict[str, Any]) -> None:
        intent, wf = message["intent"], message["workflow_id"]
        reason = message.get("reason")
        note = f"{message.get('origin')}: {reason}" if reason else str(message.get("origin"))
        with self._from_remote("intent"):
            self.controls.apply(intent, wf, reason=note)
        self.received += 1

    def _republish(self, body: dict[str, Any]) -> None:
        raw = dict(body["event"])
        raw["source"] = f"{body['origin']}/{raw.get('source') or ''}".rstrip("/")
        event = Event.model_validate(raw)
        with self._from_remote("event"):
            self.bus.publish(event)

    # --- durable state -------------------------------------------------------------------------

    def last_intent(self, workflow_id: str) -> dict[str, Any] | None:
        """The last intent any member gave ``workflow_id`` (``intent``, ``ts``, ``origin``)."""
        raw = self._r.hget(self.states_key, workflow_id)
        return json.loads(raw) if raw else None

    def aborted_since(self, workflow_id: str, since: float) -> bool:
        """Whether the last intent for ``workflow_id`` is an abort given after ``since`` (epoch
        seconds; a request scheduled before the abort was running when it was given)."""
        last = self.last_intent(workflow_id)
        return last is not None and last["intent"] == "abort" and float(last["ts"]) >= since

    def sync(self, workflow_id: str) -> None:
        """Hold ``workflow_id`` here if its last intent anywhere was a pause or preempt (and
        release it if that was a resume), before work of it starts on this member."""
        last = self.last_intent(workflow_id)
        if last is None:
            return
        wanted = _HOLDS.get(last["intent"])
        current = self.controls.state(workflow_id)
        hold = wanted is not None and current is not wanted
        release = last["intent"] == "resume" and current.holds
        if hold or release:
            self._apply(last)

    def sync_all(self) -> None:
        """:meth:`sync` every workflow an intent was ever given for."""
        for workflow_id in self._r.hkeys(self.states_key):
            self.sync(workflow_id)

    def __repr__(self) -> str:
        return f"<ControlBridge {self.member!r} on {self.prefix!r}>"
