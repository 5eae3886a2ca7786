#!/usr/bin/env python3
"""Prints the shop demo's stream contents as JSON: messages per subject in the event stream
and in the dead-letter stream (read with nats-py, a plain NATS client; used by scripts/demo).

    python demo-streams.py nats://127.0.0.1:4222
"""
import asyncio
import json
import sys

import nats


async def main(url):
    nc = await nats.connect(url)
    js = nc.jetstream()
    out = {}
    for stream in ("EDA_EVENTS", "EDA_DLQ"):
        info = await js.stream_info(stream, subjects_filter=">")
        out[stream] = info.state.subjects or {}
    await nc.close()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
