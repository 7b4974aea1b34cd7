"""A user's first command registers the user on the way (open registration):
the service answers "unknown user", the client registers its key and asks again.
What the command reports must be what happened to its write (issue 9): the
client asks again with the same request, so that a copy of it still on its way
and the new sending are one request, with one outcome (before the fix, the new
sending had a new request id, and a first init was reported "already exists")."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import wait_until

from minigit import codec
from minigit import protocol as p
from minigit.client import operations
from minigit.client.exchange import Credentials, Observer, Response
from minigit.client.transport import Connection
from minigit.config import KafkaSettings
from minigit.errors import MinigitError

pytestmark = pytest.mark.integration


@dataclass
class LateCopy:
    """Connections whose first write has a copy still on its way when the client
    asks again: a hedge sent (same request id, to the next request partition)
    before the "unknown user" answer came, and taken in by a busy replica only
    once the user is registered. With a large upload this happens on its own (a
    100 MiB init: a hedge goes out after HEDGE_AFTER_S plus the upload's intake
    time); here the copy is sent at that moment on purpose, and the client asks
    again once ``copy_sent`` returns."""

    copy_sent: Callable[[p.Request], None]
    first: tuple[p.Request, list[codec.BlobSource]] | None = None
    copied: bool = False

    def __call__(self, settings: KafkaSettings, credentials: Credentials, timeout: float) -> Connection:
        scenario = self

        class Copying(Connection):
            def _send(self, request, uploads, observer, attempt) -> None:
                super()._send(request, uploads, observer, attempt)
                if scenario.first is None and isinstance(request, p.InitRequest):
                    scenario.first = (request, list(uploads))

            def call(
                self, request: p.Request, uploads: Sequence[codec.BlobSource] = (), observer: Observer | None = None
            ) -> Response:
                first = scenario.first
                if first is not None and not scenario.copied and isinstance(request, p.InitRequest):
                    scenario.copied = True
                    self._send(first[0], first[1], Observer(), 1)  # the copy, as a hedge sends it
                    scenario.copy_sent(first[0])
                return super().call(request, uploads, observer)

        return Copying(settings, credentials, timeout)


def test_a_first_write_applied_by_a_late_copy_is_reported_as_done(service, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "a.txt").write_text("first\n")

    def wait_applied(request: p.Request) -> None:
        def created():
            states = service.wait_converged(["1", "2", "3"])
            return all(request.repo in repos for _, repos in states.values())

        wait_until(created, 60, message="the late copy to be applied")

    connector = LateCopy(wait_applied)
    options = dataclasses.replace(service.options("newcomer"), connector=connector)
    result = operations.init_repository(work, "firstrepo", options, "mine")
    assert connector.copied, "the client never asked again: the scenario did not happen"
    assert (result.status, result.new_version) == (operations.PushStatus.CREATED, 1)
    store = service.store("1")
    try:
        assert [(v.version, v.author, v.message) for v in store.list_versions("firstrepo")] == [(1, "newcomer", "mine")]
    finally:
        store.close()


@dataclass
class StaleAnswer:
    """Connections that meet, when they ask again after registering, the "unknown
    user" answer to an earlier sending of the same request: a hedge of the first
    sending, taken in by a replica that had not applied the registration yet (the
    two raced), answered after the client asked again. Here the first sending's
    answer, as the service signed it, is recorded on its way and arrives once more
    at that moment."""

    recorded: bytes | None = None
    replayed: bool = False

    def __call__(self, settings: KafkaSettings, credentials: Credentials, timeout: float) -> Connection:
        scenario = self

        class Replaying(Connection):
            def _poll(self, seconds: float) -> list[bytes]:
                values = super()._poll(seconds)
                for value in values:
                    if scenario.recorded is None and unknown_user_answer(value) is not None:
                        scenario.recorded = value
                return values

            def call(
                self, request: p.Request, uploads: Sequence[codec.BlobSource] = (), observer: Observer | None = None
            ) -> Response:
                stale = unknown_user_answer(scenario.recorded) if scenario.recorded else None
                if stale is not None and not scenario.replayed and stale.request_id == request.request_id:
                    scenario.replayed = True
                    sent = self.producer.send(
                        self.topics.responses, value=scenario.recorded, partition=self.reply_partition
                    )
                    sent.get(timeout=30)
                return super().call(request, uploads, observer)

        return Replaying(settings, credentials, timeout)


def unknown_user_answer(value: bytes) -> p.Reply | None:
    try:
        message = p.parse_message(value, allowed=p.REPLY_TYPES)
    except MinigitError:
        return None
    is_it = isinstance(message, p.Reply) and message.status == p.Status.UNKNOWN_USER and message.action == "init"
    return message if is_it else None


def test_a_late_unknown_user_answer_to_an_earlier_sending_does_not_fail_the_command(service, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "a.txt").write_text("first\n")
    connector = StaleAnswer()
    options = dataclasses.replace(service.options("latecomer"), connector=connector)
    result = operations.init_repository(work, "laterepo", options, "mine")
    assert connector.replayed, "the late answer never arrived: the scenario did not happen"
    assert (result.status, result.new_version) == (operations.PushStatus.CREATED, 1)
