"""A plain NATS client (nats-py) talking to eda: publishes plain JSON, reads what eda stored.

    python client.py <url> publish <subject> <json> [<headers as json>]   -> prints {"seq": n}
    python client.py <url> read <stream> <seq>        -> prints subject, headers, payload
"""
import asyncio
import json
import sys

import nats


async def main(url, mode, *args):
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        if mode == "publish":
            subject, payload, *headers = args
            headers = json.loads(headers[0]) if headers else None
            ack = await js.publish(subject, payload.encode(), headers=headers)
            print(json.dumps({"seq": ack.seq}))
        elif mode == "read":
            stream, seq = args
            msg = await js.get_msg(stream, int(seq))
            print(json.dumps({
                "subject": msg.subject,
                "headers": dict(msg.headers or {}),
                "payload": json.loads(msg.data),
            }))
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
