"""FastStream peer of eda's "end to end" benchmark scenario (benches/compare.rs).

Same broker work as the Rust side: a JetStream stream (file storage), the same ~250-byte JSON
order event with `Nats-Msg-Id` set, pipelined publishing with a bounded window of JetStream
publish acks in flight, and a durable pull consumer with explicit acks, batch pulls and a
bounded number of messages handled at once. The handler gets the event decoded into a typed
(pydantic) model and only counts it.

    python e2e.py --url nats://127.0.0.1:4222 --events 10000 --concurrency 64 --name t1

The last line on stdout is one JSON object: {"events":N,"seconds":S,"events_per_s":R}.
Exit code 1 (with a message on stderr saying how many arrived) if the deadline passes.

FastStream API used (checked against faststream 0.7.8, see requirements.txt):
- Event loop: uvloop when it is installed (it is pinned in requirements.txt), as FastStream's own
  runner (`faststream run`) does by default; plain asyncio otherwise.
- `NatsBroker(url, logger=<stderr logger at INFO>, log_level=logging.DEBUG)`: FastStream logs
  "Received"/"Processed" for every message at the broker's `log_level` (INFO by default).
  Lowering that level to DEBUG, under the logger's INFO threshold, drops the two per-message log
  records, as one does in production; errors are still logged at ERROR. eda does not log per
  message either. The logger writes to stderr so that stdout ends with the JSON result line
  (FastStream's default logger writes to stdout).
- Subscriber: `@broker.subscriber(subject, stream=JStream(..., storage=FILE), durable=...,
  pull_sub=PullSub(batch_size=C))`, a durable JetStream *pull* consumer (FastStream's
  `PullStreamSubscriber`; the consumer is created with AckPolicy.EXPLICIT on the server). Its
  fetch task pulls up to `batch_size` messages per pull request and runs the handler on all
  of them at once in a task group, then pulls again when they are all done: at most C messages
  are handled at once, the bound that eda's `concurrency = C` and the raw baseline's semaphore
  of 64 set. FastStream also has `max_workers=C` (`ConcurrentPullStreamSubscriber`: fetch task
  -> in-memory queue -> C workers), which keeps C handlers busy without the per-batch barrier
  and lets the pull batch be 128, but measured 30-40% slower here (10,000 events, 2 cores) than
  `PullSub(batch_size=C)`, so the faster setting is the default; `--max-workers` selects it
  (with `PullSub(batch_size=128)`, as in the Rust programs).
- Acknowledgement: the subscriber's default `ack_policy` (AckPolicy.REJECT_ON_ERROR) acks the
  message right after the handler returns without raising (and rejects it if it raises).
- Publishing: `broker.publish(model, subject, headers={"Nats-Msg-Id": ...}, stream=...)`, which
  with `stream=` goes through nats-py's `JetStreamContext.publish` and awaits the PubAck; 256
  publisher coroutines run at once, so at most 256 publish acks are awaited at any time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time

from nats.js.api import StorageType
from nats.js.errors import NotFoundError
from pydantic import BaseModel

from faststream.nats import JStream, NatsBroker, PullSub

PUBLISH_WINDOW = 256
PULL_BATCH = 128
DEADLINE_S = 600.0
ITEMS = ["sku-00017 x2", "sku-00342 x1", "sku-10001 x4"]
NOTE = "leave the parcel at the door, please ring twice"


class Order(BaseModel):
    id: int
    sent_ns: int
    customer: str
    email: str
    items: list[str]
    total_cents: int
    currency: str
    note: str


def order(i: int) -> Order:
    return Order(
        id=i,
        sent_ns=time.time_ns(),
        customer=f"customer-{i % 100000:08}",
        email=f"customer{i % 100000:08}@example.com",
        items=list(ITEMS),
        total_cents=1000 + i % 9000,
        currency="EUR",
        note=NOTE,
    )


async def run(url: str, events: int, concurrency: int, name: str, max_workers: bool) -> int:
    stream_name = f"PEER_{name}"
    subject = f"peer.{name}.order"

    logger = logging.getLogger("peer_e2e")
    logger.addHandler(logging.StreamHandler(sys.stderr))
    logger.setLevel(logging.INFO)
    broker = NatsBroker(url, logger=logger, log_level=logging.DEBUG)

    if max_workers:
        consuming = {"pull_sub": PullSub(batch_size=PULL_BATCH), "max_workers": concurrency}
    else:
        consuming = {"pull_sub": PullSub(batch_size=concurrency)}

    handled = 0
    all_handled = asyncio.Event()
    finished_at = 0.0

    @broker.subscriber(
        subject,
        stream=JStream(stream_name, subjects=[subject], storage=StorageType.FILE),
        durable=f"peer_{name}",
        **consuming,
    )
    async def handle(event: Order) -> None:
        # FastStream has decoded the JSON body into `Order` (pydantic) before this is called.
        # The end point of the measurement is taken here, when the N-th message has been
        # handled: after this function returns, FastStream's acknowledgement middleware acks
        # the message in the same task, with no other await in between than the ack itself
        # (nats-py's `Msg.ack()` is a fire-and-forget publish into the client's write buffer,
        # as the raw Rust baseline's `ack_with(AckKind::Ack)` is).
        nonlocal handled, finished_at
        handled += 1
        if handled == events:
            finished_at = time.perf_counter()
            all_handled.set()

    await broker.connect()
    js = broker.connection.jetstream()
    # A stream (and durable consumer) left over from an interrupted run of the same name would
    # hand old messages to the new subscriber: start from nothing.
    try:
        await js.delete_stream(stream_name)
    except NotFoundError:
        pass
    # Declares the stream and the durable pull consumer and starts the subscriber's fetch task.
    await broker.start()

    next_id = 0

    async def publisher() -> None:
        nonlocal next_id
        while next_id < events:
            i = next_id
            next_id += 1
            await broker.publish(
                order(i),
                subject,
                headers={"Nats-Msg-Id": f"{name}-{i}"},
                stream=stream_name,
                timeout=30.0,
            )

    code = 0
    started = time.perf_counter()
    try:
        # The measurement starts at the first publish.
        await asyncio.wait_for(
            asyncio.gather(*(publisher() for _ in range(min(PUBLISH_WINDOW, events)))),
            timeout=DEADLINE_S,
        )
        remaining = DEADLINE_S - (time.perf_counter() - started)
        await asyncio.wait_for(all_handled.wait(), timeout=max(remaining, 0.001))
    except asyncio.TimeoutError:
        print(
            f"faststream e2e: deadline of {DEADLINE_S:g} s passed: {handled} of {events} "
            f"events handled ({next_id} publishes started)",
            file=sys.stderr,
        )
        code = 1
    finally:
        await broker.stop()
        # broker.stop() drains and closes the connection: delete the stream over a new one.
        await broker.connect()
        try:
            await broker.connection.jetstream().delete_stream(stream_name)
        finally:
            await broker.stop()

    if code == 0:
        seconds = finished_at - started
        print(
            json.dumps(
                {
                    "events": events,
                    "seconds": round(seconds, 6),
                    "events_per_s": round(events / seconds, 1),
                },
                separators=(",", ":"),
            ),
            flush=True,
        )
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--name", required=True, help="suffix of the stream and subject names")
    parser.add_argument(
        "--max-workers",
        action="store_true",
        help="consume with max_workers=C and PullSub(batch_size=128) instead of "
        "PullSub(batch_size=C)",
    )
    args = parser.parse_args()
    if args.events < 1 or args.concurrency < 1:
        parser.error("--events and --concurrency must be at least 1")
    main_coro = run(args.url, args.events, args.concurrency, args.name, args.max_workers)
    try:
        import uvloop
    except ImportError:
        sys.exit(asyncio.run(main_coro))
    sys.exit(uvloop.run(main_coro))


if __name__ == "__main__":
    main()
