"""Image references, pull-stream summaries and pull single-flight (agent/images.py), no Docker needed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from agent.runtime.images import (
    DEADLINE,
    PullProgress,
    SingleFlight,
    follow_pull,
    join_image,
    names_registry,
    pull_error_is_permanent,
    split_image,
    stream_error,
)

# Recorded from a real `POST /images/create` against a local docker-registry (Docker 20.10): one layer
# already present, one 3 MB layer and one tiny layer downloaded.
RECORDED_PULL = [
    {"status": "Pulling from rtprobe/rand", "id": "1"},
    {"status": "Already exists", "progressDetail": {}, "id": "f05d75beca84"},
    {"status": "Pulling fs layer", "progressDetail": {}, "id": "5a6541cc0642"},
    {"status": "Pulling fs layer", "progressDetail": {}, "id": "c704b4e8d6f2"},
    {"status": "Downloading", "progressDetail": {"current": 106, "total": 106}, "id": "c704b4e8d6f2"},
    {"status": "Verifying Checksum", "progressDetail": {}, "id": "c704b4e8d6f2"},
    {"status": "Download complete", "progressDetail": {}, "id": "c704b4e8d6f2"},
    {"status": "Downloading", "progressDetail": {"current": 36445, "total": 3001125}, "id": "5a6541cc0642"},
    {"status": "Downloading", "progressDetail": {"current": 1536445, "total": 3001125}, "id": "5a6541cc0642"},
    {"status": "Verifying Checksum", "progressDetail": {}, "id": "5a6541cc0642"},
    {"status": "Download complete", "progressDetail": {}, "id": "5a6541cc0642"},
    {"status": "Extracting", "progressDetail": {"current": 32768, "total": 3001125}, "id": "5a6541cc0642"},
    {"status": "Pull complete", "progressDetail": {}, "id": "5a6541cc0642"},
    {"status": "Extracting", "progressDetail": {"current": 106, "total": 106}, "id": "c704b4e8d6f2"},
    {"status": "Pull complete", "progressDetail": {}, "id": "c704b4e8d6f2"},
    {"status": "Digest: sha256:027476d6dcbf396b6867aac9833bc46aabc343da0bf542dbd03a8f05cd7969a3"},
    {"status": "Status: Downloaded newer image for 127.0.0.1:45123/rtprobe/rand:1"},
]
DIGEST = "sha256:027476d6dcbf396b6867aac9833bc46aabc343da0bf542dbd03a8f05cd7969a3"


@pytest.mark.parametrize(("image", "expected"), [
    ("busybox", False),
    ("busybox:1.36", False),
    ("prefecthq/prefect:1.4.1", False),
    ("library/busybox@sha256:" + "a" * 64, False),
    ("ghcr.io/org/flow:1", True),
    ("registry:5000/flow", True),
    ("127.0.0.1:5000/flow:1", True),
    ("localhost/flow", True),
    ("Registry/flow", True),  # upper case is never a repository name, so Docker reads it as a host
    ("localhostx/flow", False),
])
def test_names_registry_follows_dockers_rule(image: str, expected: bool) -> None:
    assert names_registry(image) is expected


@pytest.mark.parametrize(("image", "expected"), [
    ("busybox", ("busybox", "latest")),
    ("busybox:1.36", ("busybox", "1.36")),
    ("org/flow:v2", ("org/flow", "v2")),
    ("host:5000/org/flow", ("host:5000/org/flow", "latest")),
    ("host:5000/org/flow:v2", ("host:5000/org/flow", "v2")),
    ("host:5000/flow@sha256:" + "b" * 64, ("host:5000/flow", "sha256:" + "b" * 64)),
    ("flow:v2@sha256:" + "c" * 64, ("flow", "sha256:" + "c" * 64)),
    ("  busybox:1 ", ("busybox", "1")),
])
def test_split_image(image: str, expected: tuple[str, str]) -> None:
    assert split_image(image) == expected


def test_split_image_rejects_empty_reference() -> None:
    with pytest.raises(ValueError):
        split_image(" ")


def test_join_image_is_the_inverse_of_split() -> None:
    for image in ("busybox:latest", "host:5000/a/b:v1", "a/b@sha256:" + "d" * 64):
        assert join_image(*split_image(image)) == image


@pytest.mark.parametrize(("message", "permanent"), [
    ("manifest for x:nope not found: manifest unknown: manifest unknown", True),
    ("pull access denied for x, repository does not exist or may require 'docker login'", True),
    ("unauthorized: authentication required", True),
    ("invalid reference format: repository name must be lowercase", True),
    ('Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused', False),
    ("received unexpected HTTP status: 503 Service Unavailable", False),
    ("net/http: TLS handshake timeout", False),
])
def test_pull_error_classification(message: str, permanent: bool) -> None:
    assert pull_error_is_permanent(message) is permanent


def test_stream_error_reads_both_error_shapes() -> None:
    assert stream_error({"status": "Downloading"}) is None
    assert stream_error({"error": "denied", "errorDetail": {"message": "denied"}}) == "denied"
    assert stream_error({"errorDetail": {"message": "only detail"}}) == "only detail"


def test_progress_summarises_the_recorded_pull() -> None:
    progress = PullProgress("127.0.0.1:45123/rtprobe/rand:1")
    for event in RECORDED_PULL[:9]:
        progress.feed(event)
    # three layers (the tag id of "Pulling from" is not a layer); one present, one tiny one fetched
    assert progress.summary() == "pulling 127.0.0.1:45123/rtprobe/rand:1: 1/3 layers done, 1.5/3.0 MB"
    for event in RECORDED_PULL[9:]:
        progress.feed(event)
    assert progress.summary() == "pulling 127.0.0.1:45123/rtprobe/rand:1: 3/3 layers done, 3.0/3.0 MB"
    assert progress.digest == DIGEST
    assert progress.finished(1.25) == (
        f"pulled 127.0.0.1:45123/rtprobe/rand:1 in 1.2s: 3 layers (1 already present), 3.0 MB downloaded "
        f"({DIGEST})")


def test_progress_of_an_up_to_date_image() -> None:
    progress = PullProgress("busybox")
    for event in ({"status": "Pulling from library/busybox", "id": "latest"},
                  {"status": "Digest: sha256:abc"},
                  {"status": "Status: Image is up to date for busybox:latest"}):
        progress.feed(event)
    assert progress.summary() == "pulling busybox: 0/0 layers done"
    assert progress.finished(0.04) == "pulled busybox in 0.0s: image is up to date (sha256:abc)"


class FakeClock:
    """Advances by `step` seconds on every read, so the interval logic runs on a predictable timeline."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_follow_pull_emits_at_most_every_interval_then_a_closing_line() -> None:
    lines: list[str] = []
    error = follow_pull(RECORDED_PULL, PullProgress("img"), lines.append, interval=5.0, clock=FakeClock(1.0))
    assert error is None
    # 17 events at 1 s each: summaries at t=6, 11, 16 (every 5 s, not per event), then the closing line
    assert len(lines) == 4
    assert all(line.startswith("pulling img: ") for line in lines[:3])
    assert lines[-1].startswith("pulled img in ")


def test_follow_pull_stops_at_the_first_stream_error() -> None:
    events = [*RECORDED_PULL[:5], {"error": "unauthorized: token expired", "errorDetail": {"message": "x"}},
              *RECORDED_PULL[5:]]
    lines: list[str] = []
    assert follow_pull(events, PullProgress("img"), lines.append, interval=0) == "unauthorized: token expired"
    assert not any(line.startswith("pulled") for line in lines)  # no success line for a failed pull


def test_follow_pull_gives_up_at_the_deadline() -> None:
    clock = FakeClock(1.0)

    def endless() -> Iterator[dict[str, object]]:
        while True:
            yield {"status": "Downloading", "progressDetail": {"current": 1, "total": 9}, "id": "a"}

    assert follow_pull(endless(), PullProgress("img"), lambda _: None, interval=60, deadline=10,
                       clock=clock) == DEADLINE
    assert 10 < clock.now < 13


def wait_for_listeners(flight: SingleFlight, key: str, count: int) -> None:
    """Followers register their listener before they block, so this proves they joined the flight."""
    deadline = time.monotonic() + 5
    while len(flight._flights[key].listeners) < count:
        assert time.monotonic() < deadline, "followers did not join the flight"
        time.sleep(0.005)


def release_after_followers_join(
    flight: SingleFlight, threads: list[threading.Thread], release: threading.Event
) -> None:
    """With the leader (threads[0]) in flight: start the followers, let the leader finish once they all
    joined, then wait for every thread."""
    for thread in threads[1:]:
        thread.start()
    wait_for_listeners(flight, "img", len(threads))
    release.set()
    for thread in threads:
        thread.join(5)


def test_single_flight_shares_one_execution_and_every_listener_hears_it() -> None:
    flight = SingleFlight()
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []
    heard: dict[int, list[str]] = {i: [] for i in range(4)}
    results: dict[int, str] = {}

    def work(emit: Callable[[str], None]) -> str:
        calls.append(1)
        started.set()
        assert release.wait(5)
        emit("progress")
        return "sha256:image"

    def caller(i: int) -> None:
        results[i] = flight.run("img", work, heard[i].append)

    threads = [threading.Thread(target=caller, args=(0,))]
    threads[0].start()
    assert started.wait(5)
    threads += [threading.Thread(target=caller, args=(i,)) for i in (1, 2, 3)]
    release_after_followers_join(flight, threads, release)
    assert calls == [1]
    assert results == {i: "sha256:image" for i in range(4)}
    assert all(lines == ["progress"] for lines in heard.values())
    assert not flight.in_flight("img")


def test_single_flight_hands_the_leaders_error_to_followers_and_forgets_it() -> None:
    flight = SingleFlight()
    gate = threading.Event()
    errors: list[BaseException] = []
    calls: list[int] = []

    def failing(emit: Callable[[str], None]) -> str:
        calls.append(1)
        gate.wait(5)
        raise RuntimeError("registry said no")

    def caller() -> None:
        try:
            flight.run("img", failing, lambda line: None)
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(3)]
    threads[0].start()
    while not flight.in_flight("img"):
        time.sleep(0.001)
    release_after_followers_join(flight, threads, gate)
    assert [str(e) for e in errors] == ["registry said no"] * 3
    assert calls == [1]
    assert flight.run("img", lambda emit: "retried") == "retried"  # a failure is not cached


def test_a_failing_progress_listener_does_not_break_the_pull() -> None:
    def broken(line: str) -> None:
        raise ValueError("logging bug")

    assert SingleFlight().run("img", lambda emit: (emit("x"), "ok")[1], broken) == "ok"
