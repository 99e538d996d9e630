"""The hub's benchmark kit: `python -m bench` (full run) or `python -m bench --quick`.

- `bench.client`: the load client (raw asyncio protocols, several processes).
- `bench.servers`: the hub and the anchor servers as child processes; `/proc` figures.
- `bench.anchors`: the bare ASGI and sse-starlette anchors (nchan: `bench/nchan.conf`).
- `bench.scenarios`: firehose, merge, fan-out, idle, first frame, start-up.
- `bench.report`: machine, versions and the figures as `RESULTS.md`.
- `bench/streams_bench.py`: the hub plugin with the benchmark's streams.
"""
