"""The resumable object fetcher against a real HTTP server (and a TCP proxy that cuts the line)."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ota_objserver import Behaviour, CutProxy, ObjectServer, mounted_tmpfs, object_server, sha

from agent.ota.errors import DiskFull, IntegrityError, TransferError
from agent.ota.fetch import BACKOFF_HIGH_S, ObjectFetcher, part_path

SIZE = 1_000_000


@pytest.fixture
def blob() -> bytes:
    return random.Random(7).randbytes(SIZE)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ObjectServer]:
    with object_server(tmp_path / "repo") as srv:
        yield srv


class Sleeps(list[float]):
    """Records backoff pauses instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def fetcher(
    base_url: str,
    retries: int = 3,
    *,
    rate_limit_bps: int | None = None,
    stop: threading.Event | None = None,
) -> tuple[ObjectFetcher, Sleeps]:
    sleeps = Sleeps()
    f = ObjectFetcher(
        base_url,
        timeout_s=5.0,
        retries=retries,
        rate_limit_bps=rate_limit_bps,
        sleep=sleeps,
        stop=stop,
        rng=random.Random(1),
    )
    return f, sleeps


def test_plain_download(server: ObjectServer, blob: bytes, tmp_path: Path) -> None:
    digest = server.put(blob)
    dest = tmp_path / "staging" / digest
    progress: list[int] = []
    f, sleeps = fetcher(server.base_url)
    assert f.fetch(digest, SIZE, dest, progress.append) == SIZE
    assert dest.read_bytes() == blob
    assert not part_path(dest).exists()
    assert progress[-1] == SIZE and progress == sorted(progress)
    assert [s.range for s in server.seen] == [None] and sleeps == []
    # Already complete: nothing over the network.
    assert f.fetch(digest, SIZE, dest) == 0
    assert len(server.seen) == 1


def test_resume_after_cut_mid_body(server: ObjectServer, blob: bytes, tmp_path: Path) -> None:
    digest = server.put(blob)
    proxy = CutProxy(server.port, cut_after=300_000)
    try:
        dest = tmp_path / "staging" / digest
        f, sleeps = fetcher(proxy.base_url())
        network = f.fetch(digest, SIZE, dest)
    finally:
        proxy.close()
    assert dest.read_bytes() == blob
    assert len(sleeps) == 1 and 0 < sleeps[0] <= BACKOFF_HIGH_S
    first, second = server.seen
    assert first.range is None
    assert second.range is not None and second.status == 206
    resumed_at = int(second.range.removeprefix("bytes=").rstrip("-"))
    # The resume point is what came through before the cut (less the response headers).
    assert 250_000 < resumed_at < proxy.forwarded[0] <= 300_000
    # Every byte came over the network once: about the object's length, not twice it.
    assert network == SIZE
    assert proxy.forwarded[0] + proxy.forwarded[1] < SIZE + 1000


def test_part_resumes_in_a_new_fetcher(server: ObjectServer, blob: bytes, tmp_path: Path) -> None:
    """An agent restart: the .part on disk is the resume point for a fresh fetcher."""
    digest = server.put(blob)
    dest = tmp_path / "staging" / digest
    proxy = CutProxy(server.port, cut_after=400_000)
    try:
        first, _ = fetcher(proxy.base_url(), retries=0)
        with pytest.raises(TransferError) as info:
            first.fetch(digest, SIZE, dest)
    finally:
        proxy.close()
    kept = part_path(dest).stat().st_size
    assert 0 < kept < 400_000
    message = str(info.value)
    assert "could not be reached" in message and f"will resume at byte {kept} of {SIZE}" in message
    second, _ = fetcher(server.base_url)
    assert second.fetch(digest, SIZE, dest) == SIZE - kept
    assert dest.read_bytes() == blob
    assert server.seen[-1].range == f"bytes={kept}-"


def test_server_ignoring_range_restarts_from_zero(tmp_path: Path, blob: bytes) -> None:
    with object_server(tmp_path / "repo", Behaviour(ignore_range=True)) as server:
        digest = server.put(blob)
        dest = tmp_path / "staging" / digest
        part_path(dest).parent.mkdir(parents=True)
        part_path(dest).write_bytes(blob[:123_456])
        f, _ = fetcher(server.base_url)
        network = f.fetch(digest, SIZE, dest)
    assert dest.read_bytes() == blob
    assert server.seen[0].range == "bytes=123456-" and server.seen[0].status == 200
    assert network == SIZE  # the whole object came again, and was written from byte 0


def test_complete_part_is_verified_without_asking(server: ObjectServer, blob: bytes, tmp_path: Path) -> None:
    digest = server.put(blob)
    dest = tmp_path / "staging" / digest
    part_path(dest).parent.mkdir(parents=True)
    part_path(dest).write_bytes(blob)
    f, _ = fetcher(server.base_url)
    assert f.fetch(digest, SIZE, dest) == 0
    assert dest.read_bytes() == blob and server.seen == []


def test_damaged_part_from_an_earlier_run_is_fetched_again(
    server: ObjectServer, blob: bytes, tmp_path: Path
) -> None:
    """A power cut may leave zeros at the end of a part: the object is downloaded once more."""
    digest = server.put(blob)
    dest = tmp_path / "staging" / digest
    part_path(dest).parent.mkdir(parents=True)
    part_path(dest).write_bytes(blob[:500_000] + bytes(4096))
    f, _ = fetcher(server.base_url)
    assert f.fetch(digest, SIZE, dest) == SIZE - 504_096 + SIZE
    assert dest.read_bytes() == blob
    assert [s.range for s in server.seen] == ["bytes=504096-", None]


def test_server_answering_416_to_a_stale_part(server: ObjectServer, tmp_path: Path) -> None:
    """The repository holds fewer bytes than the part: the part is dropped, the short object refused."""
    short = b"y" * 1000
    digest = server.put(short, name=sha(b"z" * 5000))
    dest = tmp_path / "staging" / digest
    part_path(dest).parent.mkdir(parents=True)
    part_path(dest).write_bytes(b"z" * 2000)
    f, _ = fetcher(server.base_url)
    with pytest.raises(
        IntegrityError, match="announced 1000 bytes from byte 0 but the signed manifest lists 5000"
    ):
        f.fetch(digest, 5000, dest)
    assert [s.status for s in server.seen] == [416, 200]
    assert not dest.exists() and not part_path(dest).exists()


def test_wrong_content_is_refused_and_removed(server: ObjectServer, blob: bytes, tmp_path: Path) -> None:
    expected = sha(b"what the manifest signed" * 1000)
    server.put(blob[:24_000], name=expected)  # same length, other bytes
    dest = tmp_path / "staging" / expected
    f, _ = fetcher(server.base_url)
    with pytest.raises(IntegrityError) as info:
        f.fetch(expected, 24_000, dest)
    assert "does not match the signed manifest" in str(info.value)
    assert not dest.exists() and not part_path(dest).exists()
    assert list(dest.parent.iterdir()) == []


def test_oversized_body_is_refused_before_reading(server: ObjectServer, blob: bytes, tmp_path: Path) -> None:
    digest = server.put(blob)
    dest = tmp_path / "staging" / digest
    f, _ = fetcher(server.base_url)
    with pytest.raises(IntegrityError, match=f"signed manifest lists {SIZE - 1} bytes"):
        f.fetch(digest, SIZE - 1, dest)
    assert not dest.exists() and not part_path(dest).exists()


def test_endless_data_is_cut_off(tmp_path: Path) -> None:
    with object_server(tmp_path / "repo", Behaviour(endless=True)) as server:
        digest = server.put(b"A" * 10_000)
        dest = tmp_path / "staging" / digest
        f, _ = fetcher(server.base_url)
        with pytest.raises(IntegrityError, match="kept sending data past the 10000 bytes"):
            f.fetch(digest, 10_000, dest)
    assert not dest.exists() and not part_path(dest).exists()


def test_retries_exhausted_says_what_happened(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port with nothing listening: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/tuf/targets/"
    digest = sha(b"x")
    f, sleeps = fetcher(url, retries=3)
    with pytest.raises(TransferError) as info:
        f.fetch(digest, 1, tmp_path / digest)
    message = str(info.value)
    assert f"the fleet's repository at {url}objects/{digest} could not be reached" in message
    assert "gave up after 4 tries" in message and "will resume at byte 0 of 1" in message
    assert "refused" in message.lower()
    assert len(sleeps) == 3 and all(0.05 <= s <= BACKOFF_HIGH_S for s in sleeps)
    assert info.value.retryable


def test_server_errors_are_retried(tmp_path: Path, blob: bytes) -> None:
    with object_server(tmp_path / "repo", Behaviour(fail_first=2)) as server:
        digest = server.put(blob)
        f, sleeps = fetcher(server.base_url, retries=2)
        assert f.fetch(digest, SIZE, tmp_path / digest) == SIZE
        assert [s.status for s in server.seen] == [503, 503, 200] and len(sleeps) == 2
        server.behaviour.fail_first = 5
        other = server.put(blob[:1000])
        g, _ = fetcher(server.base_url, retries=1)
        with pytest.raises(TransferError, match="HTTP 503"):
            g.fetch(other, 1000, tmp_path / other)


def test_missing_object_is_not_retried(server: ObjectServer, tmp_path: Path) -> None:
    digest = sha(b"never published")
    f, sleeps = fetcher(server.base_url, retries=5)
    with pytest.raises(TransferError, match="does not serve this object: HTTP 404"):
        f.fetch(digest, 15, tmp_path / digest)
    assert sleeps == [] and len(server.seen) == 1


def test_stop_aborts_between_chunks_and_keeps_the_part(
    server: ObjectServer, blob: bytes, tmp_path: Path
) -> None:
    digest = server.put(blob)
    dest = tmp_path / digest
    stop = threading.Event()

    def progress(done: int) -> None:
        if done >= 200_000:
            stop.set()

    f, _ = fetcher(server.base_url, stop=stop)
    with pytest.raises(TransferError, match="was stopped"):
        f.fetch(digest, SIZE, dest, progress)
    kept = part_path(dest).stat().st_size
    assert 200_000 <= kept < 200_000 + 65536 + 1
    stop.clear()
    assert f.fetch(digest, SIZE, dest) == SIZE - kept
    assert dest.read_bytes() == blob


def test_rate_limit_paces_the_download(server: ObjectServer, blob: bytes, tmp_path: Path) -> None:
    digest = server.put(blob[:300_000])
    f, sleeps = fetcher(server.base_url, rate_limit_bps=200_000)
    f.fetch(digest, 300_000, tmp_path / digest)
    # One second of burst (200 kB), then 100 kB at 200 kB/s: about half a second of pauses.
    assert 0.3 < sum(sleeps) <= 0.5 + 1e-6


def test_a_file_in_the_way_of_dest_is_replaced(server: ObjectServer, blob: bytes, tmp_path: Path) -> None:
    digest = server.put(blob[:5000])
    dest = tmp_path / digest
    dest.write_bytes(b"stale")
    f, _ = fetcher(server.base_url)
    assert f.fetch(digest, 5000, dest) == 5000
    assert dest.read_bytes() == blob[:5000]
    assert oct(os.stat(dest).st_mode)[-3:] in ("644", "600", "664")


def test_stop_ends_a_backoff_pause_at_once(tmp_path: Path) -> None:
    with object_server(tmp_path / "repo", Behaviour(fail_first=1000)) as server:
        digest = server.put(b"q" * 100)
        stop = threading.Event()
        f = ObjectFetcher(server.base_url, timeout_s=5.0, retries=50, stop=stop)  # real pauses
        errors: list[BaseException] = []

        def run() -> None:
            try:
                f.fetch(digest, 100, tmp_path / digest)
            except TransferError as exc:
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 10
        while len(server.seen) < 2 and time.monotonic() < deadline:  # in the backoff after try 2
            time.sleep(0.01)
        stop.set()
        thread.join(timeout=5)
        assert not thread.is_alive()
    assert len(errors) == 1 and "was stopped" in str(errors[0])


def test_disk_full_while_downloading_keeps_the_part(
    server: ObjectServer, blob: bytes, tmp_path: Path
) -> None:
    digest = server.put(blob * 2)  # 2 MB into a 1 MB file system
    with mounted_tmpfs(tmp_path / "disk", "1m") as disk:
        dest = disk / "staging" / "objects" / digest
        f, sleeps = fetcher(server.base_url)
        with pytest.raises(DiskFull) as info:
            f.fetch(digest, 2 * SIZE, dest)
        assert "is full while downloading" in str(info.value)
        assert not dest.exists() and 0 < part_path(dest).stat().st_size <= 1024 * 1024
        assert sleeps == []  # a full disk is not a network failure: no retry


def test_empty_object(server: ObjectServer, tmp_path: Path) -> None:
    digest = server.put(b"")
    dest = tmp_path / "staging" / digest
    f, _ = fetcher(server.base_url)
    assert f.fetch(digest, 0, dest) == 0
    assert dest.read_bytes() == b"" and not part_path(dest).exists()


def test_a_silent_server_times_out_and_is_retried(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts, never answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/tuf/targets/"
        digest = sha(b"x")
        f = ObjectFetcher(url, timeout_s=0.2, retries=1, sleep=Sleeps(), rng=random.Random(1))
        with pytest.raises(TransferError, match=r"timed out.*gave up after 2 tries"):
            f.fetch(digest, 1, tmp_path / digest)
