"""Baseline: a broadcast server on the `websockets` library (asyncio), for ratios.

Subscribers connect to ``/``; every text message received on ``/publish`` is sent to
every subscriber with ``websockets.broadcast`` (its fastest, synchronous path), with
its ``"seq":0`` placeholder replaced by the server's next number (as a broker numbers
events). On ``/publish?ack=1`` each message is answered with ``ack`` once broadcast.
Not part of the broker: a yardstick driven by ``python -m tests.load``.
"""

import argparse
import asyncio

import websockets
from websockets.asyncio.server import broadcast, serve

subscribers = set()
seq = 0


async def handler(websocket):
    global seq
    if websocket.request.path.startswith("/publish"):
        ack = "ack=1" in websocket.request.path
        async for message in websocket:
            seq += 1
            broadcast(subscribers, message.replace('"seq":0,', f'"seq":{seq},', 1))
            if ack:
                await websocket.send("ack")
        return
    subscribers.add(websocket)
    try:
        await websocket.wait_closed()
    finally:
        subscribers.discard(websocket)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, max_queue=None, ping_interval=None, compression=None):
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    print(f"websockets {websockets.__version__} broadcast on {parser.parse_args().port}", flush=True)
    asyncio.run(main(parser.parse_args().port))
