"""The benchmark kit keeps working: its quick mode end to end, and its load client's parser."""

from __future__ import annotations

import asyncio
import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _figures(markdown: str) -> dict[tuple[str, str, str, str], float]:
    """(scenario, case, figure, server) -> median, from the tables of a results file."""
    figures: dict[tuple[str, str, str, str], float] = {}
    scenario = ""
    for line in markdown.splitlines():
        heading = re.match(r"## ([\w-]+): ", line)
        if heading:
            scenario = heading.group(1)
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if scenario and len(cells) == 6 and cells[0] not in ("case", "---"):
            case, figure, server, median = cells[:4]
            figures[(scenario, case, figure, server)] = float(median.replace(",", ""))
    return figures


@pytest.mark.timeout(180)
def test_quick_mode_measures_every_scenario_of_the_hub(tmp_path: Path, redis_server: str) -> None:
    output = tmp_path / "RESULTS-quick.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--output",
            str(output),
            "--redis",
            redis_server,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    text = output.read_text()
    assert "**error**" not in text
    for heading in ("## Machine", "## Versions", "## Targets"):
        assert heading in text
    figures = _figures(text)

    def hub(scenario: str, case: str, figure: str) -> float:
        key = (scenario, case, figure, "hub")
        assert key in figures, f"{key} missing from:\n{text}"
        return figures[key]

    assert hub("firehose", "1 client", "events/s") > 0
    assert hub("merge", "8 streams", "events/s") > 0
    assert 0 < hub("merge", "8 streams", "fairness (min/max share)") <= 1
    assert hub("fanout", "100 subscribers", "delivered (fraction)") == 1.0
    assert 0 < hub("fanout", "100 subscribers", "p50 latency (ms)")
    assert hub("fanout", "100 subscribers", "p50 latency (ms)") <= hub(
        "fanout", "100 subscribers", "p99 latency (ms)"
    )
    assert hub("idle", "200 subscribers", "RSS per connection (KiB)") > 0
    assert hub("first-frame", "echo, count=1", "p50 (ms)") > 0
    assert hub("startup", "spawn to listening", "start-up (s)") > 0
    cluster = {key[2]: value for key, value in figures.items() if key[0] == "cluster"}
    assert cluster["delivered (fraction)"] == 1.0
    assert 0 < cluster["p50 latency (ms)"] <= cluster["p99 latency (ms)"]
    # Quick mode runs the hub alone, no anchor, and beside it the hub with authorization on
    # (every subscriber with a token), which gets as far; the cluster scenario runs only its
    # two processes.
    rooms = {(key[1], key[2], key[3]): value for key, value in figures.items() if key[0] == "rooms"}
    case = "100 rooms x 2 subscribers"
    assert rooms[(case, "delivered (fraction)", "hub")] == 1.0
    assert rooms[(case, "delivered (fraction)", "2 hubs, redis")] == 1.0
    assert rooms[("200 idle keyed topics", "RSS per topic of 100 events (KiB)", "hub")] > 0
    assert {key[2] for key in rooms} == {"hub", "2 hubs, redis"}
    servers = {(key[0], key[3]) for key in figures if key[0] not in ("cluster", "rooms")}
    assert servers == {
        (scenario, server)
        for scenario in ("firehose", "merge", "fanout", "idle", "first-frame")
        for server in ("hub", "hub, auth")
    } | {("startup", "hub")}
    assert figures[("fanout", "100 subscribers", "delivered (fraction)", "hub, auth")] == 1.0
    assert figures[("firehose", "1 client", "events/s", "hub, auth")] > 0
    assert {key[3] for key in figures if key[0] == "cluster"} == {"2 hubs, redis"}


class _Transport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


def _chunked(body: bytes, rng: random.Random) -> bytes:
    out = b""
    while body:
        size = rng.randint(1, 300)
        out += f"{size:x}\r\n".encode() + body[:size] + b"\r\n"
        body = body[size:]
    return out + b"0\r\n\r\n"


@pytest.mark.parametrize("separator", ["\n", "\r\n"])
def test_load_client_counts_frames_across_any_split(
    monkeypatch: pytest.MonkeyPatch, separator: str
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.client import SSEProtocol, Tally

    rng = random.Random(4)
    frames = [f"retry: 3000{separator}{separator}"]
    for seq in range(200):
        data = json.dumps({"seq": seq, "sent_at": 1000.0 + seq}, separators=(",", ":"))
        name = "s1" if seq % 3 else "s2"
        frames.append(f"id: bench:{seq}{separator}event: {name}{separator}data: {data}")
        frames.append(separator * 2)
        if seq % 50 == 0:
            frames.append(f": ping{separator}{separator}")
    body = "".join(frames).encode()
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    stream = head + _chunked(body, rng)

    async def feed() -> tuple[Tally, Any]:
        tally = Tally()
        protocol = SSEProtocol(b"GET / HTTP/1.1\r\n\r\n", tally, latency=True, by_name=True)
        protocol.connection_made(_Transport())  # type: ignore[arg-type]
        position = 0
        while position < len(stream):
            step = rng.randint(1, 200)
            protocol.data_received(stream[position : position + step])
            position += step
        return tally, await protocol.started

    tally, status = asyncio.run(feed())
    assert status == 200
    assert tally.events == 200
    assert tally.deliveries == 200
    assert tally.names == {b"s1": 133, b"s2": 67}
    assert len(tally.latencies) == 200
