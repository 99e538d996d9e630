"""Results: the figures collected over the runs, the machine they ran on, and RESULTS.md."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

HUB = "hub"
# The hub with authorization on, every subscriber with a token of its own.
HUB_AUTH = "hub, auth"
PACKAGES = (
    "multistream-hub",  # the hub's distribution (`hub` on PyPI is another project)
    "uvicorn",
    "uvloop",
    "httptools",
    "sse-starlette",
    "starlette",
    "fastapi",
    "pydantic",
    "pydantic-core",
    "aiostream",
    "pyjwt",
)


@dataclass
class Row:
    """One figure of one server in one case of a scenario, over the runs."""

    scenario: str
    case: str
    metric: str
    server: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)


@dataclass
class Scenario:
    name: str
    title: str
    description: str
    anchors: tuple[str, ...]  # the servers the hub is compared with, in order


@dataclass
class Results:
    rows: dict[tuple[str, str, str, str], Row] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # Context for the figures, not figures: (scenario, what) -> "case, server" -> values.
    observed: dict[tuple[str, str], dict[str, list[float]]] = field(default_factory=dict)

    def observe(self, scenario: str, what: str, where: str, value: float) -> None:
        self.observed.setdefault((scenario, what), {}).setdefault(where, []).append(value)

    def add(self, scenario: str, case: str, metric: str, server: str, value: float) -> None:
        key = (scenario, case, metric, server)
        self.rows.setdefault(key, Row(scenario, case, metric, server)).values.append(value)

    def note(self, scenario: str, text: str) -> None:
        notes = self.notes.setdefault(scenario, [])
        if text not in notes:
            notes.append(text)

    def error(self, scenario: str, text: str) -> None:
        self.errors.append(f"{scenario}: {text}")
        self.note(scenario, f"**error**: {text}")

    def get(self, scenario: str, case: str, metric: str, server: str) -> Row | None:
        return self.rows.get((scenario, case, metric, server))


def number(value: float, metric: str = "") -> str:
    if math.isnan(value):
        return "n/a"
    if "fraction" in metric:
        return f"{value:.4f}"
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _ratio(hub: Row | None, anchor: Row) -> str:
    if hub is None or not hub.values or not anchor.values or anchor.median == 0:
        return ""
    return f"{hub.median / anchor.median:.2f}x"


def table(results: Results, scenario: Scenario, runs: int) -> list[str]:
    rows = [row for row in results.rows.values() if row.scenario == scenario.name]
    if not rows:
        return ["No figures."]
    lines = [
        f"| case | figure | server | median | range of {runs} runs (min - max) | hub / anchor |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    order = {name: i for i, name in enumerate((HUB, HUB_AUTH, *scenario.anchors))}
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.case, row.metric), []).append(row)
    for (case, metric), group in groups.items():
        hub = next((row for row in group if row.server == HUB), None)
        for row in sorted(group, key=lambda r: order.get(r.server, len(order))):
            spread = f"{number(min(row.values), metric)} - {number(max(row.values), metric)}"
            if len(row.values) < runs:
                spread += f" ({len(row.values)} runs)"
            ratio = "" if row.server == HUB else _ratio(hub, row)
            lines.append(
                f"| {case} | {metric} | {row.server} | {number(row.median, metric)} "
                f"| {spread} | {ratio} |"
            )
    return lines


@dataclass
class Target:
    text: str
    met: bool | None  # None: not measured in this run
    detail: str


def _median(results: Results, *key: str) -> float | None:
    row = results.get(*key)
    return row.median if row is not None and row.values else None


def targets(results: Results) -> list[Target]:
    """The targets of issue 4, checked against the medians of this run."""
    found: list[Target] = []
    hub = _median(results, "firehose", "1 client", "events/s", HUB)
    bare = _median(results, "firehose", "1 client", "events/s", "bare ASGI")
    found.append(
        Target(
            "firehose: hub >= 1.0x the bare ASGI per-frame ceiling",
            None if hub is None or not bare else hub / bare >= 1.0,
            "" if hub is None or not bare else f"{hub / bare:.2f}x",
        )
    )
    case = "5,000 subscribers"
    p99 = _median(results, "fanout", case, "p99 latency (ms)", HUB)
    nchan = _median(results, "fanout", case, "p99 latency (ms)", "nchan")
    delivered = _median(results, "fanout", case, "delivered (fraction)", HUB)
    met = None
    detail = ""
    if p99 is not None and delivered is not None and nchan:
        met = delivered == 1.0 and p99 <= 1.5 * nchan
        detail = f"delivered {delivered:.4f}, p99 {p99:.1f} ms = {p99 / nchan:.2f}x nchan's"
    found.append(Target("fan-out 5,000: all delivered, p99 <= 1.5x nchan's", met, detail))
    delivered = _median(results, "fanout", "10,000 subscribers", "delivered (fraction)", HUB)
    found.append(
        Target(
            "fan-out 10,000: all delivered",
            None if delivered is None else delivered == 1.0,
            "" if delivered is None else f"delivered {delivered:.4f}",
        )
    )
    rss = _median(results, "idle", case, "RSS per connection (KiB)", HUB)
    found.append(
        Target(
            "idle 5,000: <= 15 KiB RSS per subscriber",
            None if rss is None else rss <= 15,
            "" if rss is None else f"{rss:.1f} KiB",
        )
    )
    p50 = _median(results, "first-frame", "echo, count=1", "p50 (ms)", HUB)
    found.append(
        Target(
            "first frame: p50 <= 5 ms",
            None if p50 is None else p50 <= 5,
            "" if p50 is None else f"{p50:.2f} ms",
        )
    )
    return found


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _run(*command: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (done.stdout or done.stderr).strip() if done.returncode == 0 else ""


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    memory = next(
        (
            int(line.split()[1]) * 1024
            for line in _read("/proc/meminfo").splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    release = next(
        (
            line.split("=", 1)[1].strip('"')
            for line in _read("/etc/os-release").splitlines()
            if line.startswith("PRETTY_NAME=")
        ),
        platform.system(),
    )
    return {
        "CPU": f"{cpu}, {os.cpu_count()} cores",
        "load average (1, 5, 15 min) at the end": " ".join(_read("/proc/loadavg").split()[:3]),
        "RAM": f"{memory / 2**30:.1f} GiB",
        "OS": f"{release}, Linux {platform.release()}",
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
    }


def versions(nginx: str | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    project = Path(__file__).resolve().parent.parent
    commit = _run("git", "-C", str(project), "rev-parse", "--short", "HEAD")
    if commit:
        dirty = _run("git", "-C", str(project), "status", "--porcelain", "--", "hub", "streams")
        found["multistream-hub"] += (
            f" (commit {commit}{', with uncommitted changes' if dirty else ''})"
        )
    found["nginx"] = nginx or "not installed"
    nchan = _run("dpkg-query", "-W", "-f=${Version}", "libnginx-mod-nchan")
    found["nchan (libnginx-mod-nchan)"] = nchan or "not installed"
    return found


def render(
    results: Results,
    scenarios: Iterable[Scenario],
    *,
    title: str,
    plan: list[str],
    runs: int,
    nginx: str | None,
    elapsed: float,
) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# {title}", "", f"Written by `python -m bench` on {now}, in {elapsed:.0f} s.", ""]
    lines += ["## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in machine().items()]
    lines += ["", "## Versions", ""]
    lines += [f"- {key}: {value}" for key, value in versions(nginx).items()]
    lines += ["", "## Plan", ""]
    lines += [f"- {item}" for item in plan]
    lines += ["", "## Targets (issue 4), from the medians below", ""]
    lines += ["| target | met | figure |", "| --- | --- | --- |"]
    for target in targets(results):
        met = {None: "not measured", True: "yes", False: "**no**"}[target.met]
        lines.append(f"| {target.text} | {met} | {target.detail} |")
    for scenario in scenarios:
        lines += ["", f"## {scenario.name}: {scenario.title}", "", scenario.description, ""]
        lines += table(results, scenario, runs)
        notes = [
            f"{what}: "
            + "; ".join(
                f"{where} {number(min(values))}"
                + ("" if len(values) == 1 else f" - {number(max(values))}")
                for where, values in seen.items()
            )
            for (name, what), seen in results.observed.items()
            if name == scenario.name
        ]
        notes += results.notes.get(scenario.name, [])
        if notes:
            lines += [""] + [f"- {note}" for note in notes]
    lines.append("")
    return "\n".join(lines)
