"""`python -m bench`: run every scenario against the hub and its anchors, write RESULTS.md."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.client import raise_nofile, run
from bench.report import Results, render
from bench.scenarios import ALL, Plan, full_plan, log, quick_plan
from bench.servers import BENCH, nginx_version


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the hub against its anchors and write the results as Markdown.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small numbers, hub only (with and without auth), under a minute "
        "(writes bench/RESULTS-quick.md)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="SCENARIO",
        help=f"run only these scenarios (repeatable or comma-separated): {', '.join(ALL)}",
    )
    parser.add_argument("--runs", type=int, help="runs per figure (default 3; quick mode: 1)")
    parser.add_argument(
        "--processes",
        type=int,
        default=min(4, max(2, os.cpu_count() or 2)),
        help="load-client processes for the many-connection scenarios (default: 2 to 4)",
    )
    parser.add_argument(
        "--fanout-sizes",
        metavar="N,N,...",
        help="subscriber counts of the fan-out scenario (default 100,1000,5000,10000; quick: 100)",
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="the Redis of the cluster scenario (default: $REDIS_URL, else "
        "redis://127.0.0.1:6379/0); its keys go under a prefix of each run's own",
    )
    parser.add_argument("--output", type=Path, help="where to write the results")
    return parser


def _selected(only: Sequence[str] | None) -> list[str]:
    if not only:
        return list(ALL)
    names = [name.strip() for item in only for name in item.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALL]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {', '.join(ALL)}")
    return [name for name in ALL if name in names]


async def _run_all(plan: Plan, names: list[str]) -> tuple[Results, str | None]:
    results = Results()
    for name in names:
        log(f"== {name}")
        await ALL[name][1](plan, results)
    return results, await nginx_version()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = _selected(args.only)
    if args.runs is not None and args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    if args.quick:
        plan = quick_plan(args.runs or 1, args.processes, args.redis)
        output = args.output or BENCH / "RESULTS-quick.md"
    else:
        plan = full_plan(args.runs or 3, args.processes, args.redis)
        output = args.output or BENCH / "RESULTS.md"
    if args.fanout_sizes:
        sizes = tuple(int(n) for n in args.fanout_sizes.split(","))
        plan = dataclasses.replace(plan, fanout_sizes=sizes)
    limit = raise_nofile()
    needed = max(*plan.fanout_sizes, plan.idle_subscribers) + 200
    limit_note = f"open-file limit {limit} (inherited by the servers and the client processes)"
    if limit < needed:
        limit_note += f"; **below the {needed} the largest scenario needs**: raise `ulimit -Hn`"
    log(limit_note)
    started = time.perf_counter()
    results, nginx = run(_run_all(plan, names))
    elapsed = time.perf_counter() - started
    text = render(
        results,
        [ALL[name][0] for name in names],
        title="Hub benchmark: quick mode" if plan.quick else "Hub benchmark",
        plan=[
            *plan.describe(),
            limit_note,
            f"command: `{' '.join(['python -m bench', *(argv or sys.argv[1:])])}`",
        ],
        runs=plan.runs,
        nginx=nginx,
        elapsed=elapsed,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    log(
        f"wrote {output} in {elapsed:.0f} s"
        + (f"; {len(results.errors)} error(s)" if results.errors else "")
    )
    for error in results.errors:
        log(f"error: {error}")
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
