"""`hub tail` and `hub publish` (hub/client.py), run as a user runs them, against real hubs."""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import IO, Any

import httpx
import pytest
from support import free_port, publish_chat, room

from hub.cli import main
from hub.testing import HubServer, serve

TIME = re.compile(r"\d\d:\d\d:\d\d\.\d{3}")


def hub(
    *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


class Tail:
    """A `hub tail` in a child process; its output read line by line as it comes."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hub", "tail", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.stdout: queue.Queue[str | None] = queue.Queue()
        self.stderr: queue.Queue[str | None] = queue.Queue()
        self.errors: list[str] = []  # every stderr line read so far
        assert self.process.stdout is not None and self.process.stderr is not None
        self.readers = [
            threading.Thread(target=self._read, args=(pipe, lines), daemon=True)
            for pipe, lines in (
                (self.process.stdout, self.stdout),
                (self.process.stderr, self.stderr),
            )
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(pipe: IO[str], lines: queue.Queue[str | None]) -> None:
        for line in pipe:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def line(self, timeout: float = 10.0) -> str:
        try:
            line = self.stdout.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s; stderr: {self.errors}") from None
        assert line is not None, f"hub tail exited ({self.process.wait()}): {self.drain()}"
        return line

    def event(self, timeout: float = 10.0) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.line(timeout))
        return event

    def events_until(self, name: str, timeout: float = 10.0) -> Iterator[dict[str, Any]]:
        """The events up to and including the first named `name`."""
        while True:
            event = self.event(timeout)
            yield event
            if event["event"] == name:
                return

    def notice(self, containing: str, timeout: float = 10.0) -> str:
        """The first line on stderr (from now) that contains `containing`."""
        while True:
            try:
                line = self.stderr.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {containing!r} on stderr: {self.errors}") from None
            assert line is not None, f"stderr ended without {containing!r}: {self.errors}"
            self.errors.append(line)
            if containing in line:
                return line

    def drain(self) -> list[str]:
        """stderr, all of it, once the process has ended."""
        self.process.wait(10)
        while (line := self.stderr.get(timeout=10)) is not None:
            self.errors.append(line)
        return self.errors

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(10)

    def __enter__(self) -> Tail:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        for reader in self.readers:
            reader.join(10)
        assert self.process.stdout is not None and self.process.stderr is not None
        self.process.stdout.close()
        self.process.stderr.close()


def delay(notice: str) -> float:
    """The wait a "reconnecting in 0.1 s (...)" notice announces."""
    match = re.match(r"reconnecting in (\d+\.\d) s \(", notice)
    assert match, notice
    return float(match.group(1))


def test_tail_prints_a_line_per_event_and_exits_at_hub_end(hub_server: HubServer) -> None:
    result = hub(
        "tail",
        "echo,reverse_echo",
        *("-p", "message=hi", "-p", "count=2", "-p", "interval=0", "--url", hub_server.url),
    )
    assert result.returncode == 0, result.stderr
    *events, end = result.stdout.splitlines()
    assert "\x1b" not in result.stdout  # no colours in a pipe
    received = sorted(line.split()[1:3] for line in events)
    assert received == [["echo", "message=hi"]] * 2 + [["reverse_echo", "message=ih"]] * 2
    for line in events:
        assert TIME.fullmatch(line.split()[0]) and re.search(r" created_at=\S+Z$", line), line
    assert end.split()[1] == "hub.end"


def test_tail_json_gives_event_id_and_data_and_resumes_since(hub_server: HubServer) -> None:
    result = hub(
        "tail",
        "counter",
        *("--json", "--since", "counter:41", "-p", "count=2", "-p", "interval=0"),
        *("--url", hub_server.url),
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[:2] == [
        {"event": "counter", "id": "counter:42", "data": {"n": 42}},
        {"event": "counter", "id": "counter:43", "data": {"n": 43}},
    ]
    assert lines[2]["event"] == "hub.end" and lines[2]["id"] is None
    assert len(lines) == 3


def test_each_stream_keeps_its_colour_and_errors_stand_out(hub_server: HubServer) -> None:
    styles: list[dict[str, str]] = []
    for _ in range(2):  # a colour per name, the same in every run
        result = hub(
            "tail",
            "counter,failing",
            *("-p", "counter.count=1", "-p", "fail_after=1", "--url", hub_server.url),
            env={"FORCE_COLOR": "1"},
        )
        assert result.returncode == 0, result.stderr
        styles.append(
            {
                name: style
                for style, name in re.findall(
                    r"\x1b\[([\d;]+)m(counter|failing|hub\.error)", result.stdout
                )
            }
        )
        (error,) = [line for line in result.stdout.splitlines() if "hub.error" in line]
        assert 'stream=failing error="RuntimeError: boom after 1"' in error
    assert styles[0] == styles[1]
    assert styles[0]["hub.error"] == "1;31"  # bold red
    assert styles[0]["counter"] != styles[0]["failing"]


def test_tail_says_why_the_hub_refused(hub_server: HubServer) -> None:
    unknown = hub("tail", "echo,nope", "--url", hub_server.url)
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("hub tail: error: unknown stream 'nope'")
    assert "(404 unknown_stream)" in unknown.stderr and "Traceback" not in unknown.stderr
    invalid = hub("tail", "echo", "-p", "echo.interval=soon", "--url", hub_server.url)
    assert invalid.returncode == 1
    assert "interval" in invalid.stderr and "(422 invalid_parameters)" in invalid.stderr


def test_a_parameter_without_a_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["tail", "echo", "-p", "message"])
    assert exit.value.code == 2
    assert "'message' is not NAME=VALUE" in capsys.readouterr().err


def test_tail_waits_for_a_hub_that_is_not_there_and_ctrl_c_ends_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Tail("echo", "--url", url) as tail:
        assert "Connection refused" in tail.notice("reconnecting in 1.0 s (cannot connect to")
        assert tail.interrupt() == 130
        assert not any("Traceback" in line for line in tail.drain())


def test_tail_reconnects_after_a_restart_of_a_memory_hub() -> None:
    port = free_port()
    args = ["--port", str(port), "--retry", "100"]
    name = room()
    with serve(args=args) as first:
        (since,) = publish_chat(first, name, "one")
        with Tail(name, "--json", "--since", since, "--url", first.url) as tail:
            publish_chat(first, name, "two")
            assert tail.event()["data"]["text"] == "two"
            first.stop()
            assert tail.event()["event"] == "hub.shutdown"
            # Within the hub's hint: at shutdown, each client's is 1 to 2 times --retry.
            first_wait = delay(tail.notice("(the hub is shutting down)"))
            assert 0.1 <= first_wait <= 0.2
            with serve(args=args) as second:
                backoff = delay(tail.notice("(cannot connect to"))
                assert first_wait < backoff <= 2 * first_wait + 0.1
                publish_chat(second, name, "three")
                # The new hub has a history of its own: the old cursor is a gap, not an error,
                # and what the new history holds follows it.
                gap = tail.event()
                assert gap["event"] == "hub.gap" and gap["data"]["stream"] == name
                three = tail.event()
                assert three["data"]["text"] == "three" and three["id"].startswith(name + ":")
                assert tail.process.poll() is None


def test_tail_loses_nothing_across_a_restart_of_a_redis_hub(redis_server: str) -> None:
    port = free_port()
    args = ["--port", str(port), "--retry", "100", "--broker", redis_server]
    name = room()
    with serve(args=args) as first:
        (since,) = publish_chat(first, name, "one")
        with Tail(name, "--json", "--since", since, "--url", first.url) as tail:
            publish_chat(first, name, "two")
            assert tail.event()["data"]["text"] == "two"
            first.stop()
            tail.notice("reconnecting in")
            with serve(args=args) as second:
                # Published while the tail is away: the topic's history in Redis replays it.
                publish_chat(second, name, "three", "four")
                received = [tail.event() for _ in range(3)]
    texts = [event["data"].get("text") for event in received]
    assert texts == [None, "three", "four"]  # hub.shutdown, then the rest: no gap, no loss
    assert received[0]["event"] == "hub.shutdown"


def test_tail_retries_a_busy_hub_after_the_wait_it_asks() -> None:
    with serve(args=["--max-connections", "1"]) as server:
        with Tail("echo", "-p", "interval=60", "--url", server.url) as first:
            assert "message=hello" in first.line()
            with Tail("counter", "--json", "--url", server.url) as second:
                busy = second.event()
                assert busy["event"] == "hub.busy" and busy["id"] is None
                notice = second.notice("reconnecting in")
                assert "(busy: " in notice
                assert float(notice.split()[2]) >= busy["data"]["retry_after"] - 0.05
                assert second.interrupt() == 130
            assert first.interrupt() == 130
            # Where it stopped, for the next run to go on from.
            assert "resume with --since 'echo:0'" in first.drain()


def test_publish_prints_positions_and_ids(hub_server: HubServer) -> None:
    name = room()
    one = hub("publish", name, '{"user": "ana", "text": "hi"}', "--url", hub_server.url)
    assert one.returncode == 0, one.stderr
    position, cursor = one.stdout.split()
    assert cursor == f"{name}:{position}"
    batch = '[{"user": "ana", "text": "a"}, {"user": "bo", "text": "b"}]'
    two = hub("publish", name, batch, env={"HUB_URL": hub_server.url})
    assert two.returncode == 0, two.stderr
    assert [line.split()[1].startswith(name + ":") for line in two.stdout.splitlines()] == [
        True,
        True,
    ]
    # What `hub tail --since` the first one gives: the batch, in order.
    tail = hub("tail", name, "--json", "--since", cursor, "-p", "count=2", "--url", hub_server.url)
    assert tail.returncode == 0, tail.stderr
    texts = [json.loads(line)["data"].get("text") for line in tail.stdout.splitlines()]
    assert texts == ["a", "b", None]  # and hub.end


def test_publish_reads_one_event_a_line_from_stdin(hub_server: HubServer) -> None:
    name = room()
    lines = '{"user": "ana", "text": "one"}\n\n{"user": "bo", "text": "two"}\n'
    result = hub("publish", name, "--url", hub_server.url, input=lines)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2  # the blank line is skipped
    answer = httpx.get(f"{hub_server.url}/streams/{name}", timeout=10)
    assert answer.json()["position"] == result.stdout.split()[-2]  # the newest: the last line's


def publish(
    capsys: pytest.CaptureFixture[str], *args: str, stdin: str | None = None
) -> tuple[int, str, str]:
    """`hub publish`, in this process: exit status, stdout, stderr."""
    if stdin is None:
        status = main(["publish", *args])
    else:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "stdin", io.StringIO(stdin))
            status = main(["publish", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_publish_names_what_is_wrong(
    hub_server: HubServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ("--url", hub_server.url)
    status, _, err = publish(capsys, room(), '{"user": "ana"}', *url)
    assert status == 1 and err.startswith("hub publish: error: invalid events for 'room/")
    assert "text: Field required" in err and "(422 invalid_events)" in err
    status, _, err = publish(capsys, room(), "{user: ana}", *url)
    assert status == 2 and "the JSON argument is not JSON" in err
    status, _, err = publish(capsys, "nope", '{"a": 1}', *url)
    assert status == 1 and "(404 unknown_stream)" in err
    status, _, err = publish(capsys, "chat", '{"a": 1}', "--url", f"http://127.0.0.1:{free_port()}")
    assert status == 1 and "cannot reach" in err and "Connection refused" in err
    # From stdin, an event is named by its line; the lines before a bad one are published.
    bad = '{"user": "ana", "text": "three"}\n{"user": "ana", "text": \n{"user": "bo"}\n'
    status, out, err = publish(capsys, room(), *url, stdin=bad)
    assert status == 2 and "line 2 is not JSON" in err and len(out.splitlines()) == 1
    invalid = '{"user": "ana", "text": "four"}\n\n{"user": "ana"}\n'
    status, out, err = publish(capsys, room(), *url, stdin=invalid)
    assert status == 1 and "line 3: text: Field required" in err


def test_serve_does_not_import_the_client() -> None:
    """httpx and rich are for `hub tail` and `hub publish` alone."""
    code = "import sys, hub.cli; assert not {'httpx', 'rich'} & set(sys.modules), sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
