"""Baseline: the straightforward trio-websocket broadcast server, for ratios.

One writer task per subscriber fed by a bounded memory channel; each message is sent
with ``send_message`` (encoded and framed per subscriber). This is what a team writes
first with trio-websocket; trio-broker is measured against it. A published message's
``"seq":0`` placeholder gets the server's next number; on ``/publish?ack=1`` each
message is answered with ``ack`` once handed to every subscriber.
"""

import argparse

import trio
from trio_websocket import ConnectionClosed, serve_websocket

QUEUE = 1024
subscribers: set = set()
seq = 0


async def handler(request):
    global seq
    ws = await request.accept()
    if request.path.startswith("/publish"):
        ack = "ack=1" in request.path
        try:
            while True:
                message = await ws.get_message()
                seq += 1
                message = message.replace('"seq":0,', f'"seq":{seq},', 1)
                for channel in list(subscribers):
                    try:
                        channel.send_nowait(message)
                    except trio.WouldBlock:
                        subscribers.discard(channel)  # too slow: dropped
                if ack:
                    await ws.send_message("ack")
        except ConnectionClosed:
            return
    send, receive = trio.open_memory_channel(QUEUE)
    subscribers.add(send)
    try:
        async with trio.open_nursery() as nursery:
            async def reader():
                try:
                    while True:
                        await ws.get_message()
                except ConnectionClosed:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(reader)
            async for message in receive:
                await ws.send_message(message)
    except ConnectionClosed:
        pass
    finally:
        subscribers.discard(send)


async def main(port: int) -> None:
    await serve_websocket(handler, "127.0.0.1", port, ssl_context=None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    trio.run(main, parser.parse_args().port)
