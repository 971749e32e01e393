#!/usr/bin/env python3
"""A TCP relay that delays each direction, for start times over a slow link (the kernel's netem is
not available everywhere): `relay.py LISTEN_PORT TARGET_HOST:PORT RTT_MS` (port 0: a free one,
named in the first line it prints, `{"listening": PORT, ...}`).

Every chunk read from one side is written to the other RTT/2 after it arrived, in order, so a
round trip through the relay costs RTT more than without it. Listens on 127.0.0.1 only. When a
connection closes it prints one JSON line on stdout: bytes each way, and `turns`, the number of
times the client sent after the server had (a lower bound on the round trips the protocol waited
for; the first flight is not counted).
"""
import asyncio
import json
import sys
import time


async def pump(reader, writer, delay, side, state):
    queue = asyncio.Queue()

    async def write_out():
        while True:
            item = await queue.get()
            if item is None:
                break
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass

    out = asyncio.create_task(write_out())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            state["bytes_" + side] += len(data)
            if side == "up" and state["last"] == "down":
                state["turns"] += 1
            state["last"] = side
            await queue.put((time.monotonic() + delay, data))
    except OSError:
        pass
    await queue.put(None)
    await out


async def main():
    port, target, rtt_ms = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    host, tport = target.rsplit(":", 1)
    delay = rtt_ms / 2000.0

    async def handle(client_r, client_w):
        state = {"bytes_up": 0, "bytes_down": 0, "turns": 0, "last": None}
        started = time.monotonic()
        try:
            server_r, server_w = await asyncio.wait_for(asyncio.open_connection(host, int(tport)), 10)
        except (OSError, asyncio.TimeoutError):
            client_w.close()
            return
        await asyncio.gather(
            pump(client_r, server_w, delay, "up", state), pump(server_r, client_w, delay, "down", state)
        )
        for w in (client_w, server_w):
            w.close()
        state.pop("last")
        state["seconds"] = round(time.monotonic() - started, 4)
        print(json.dumps(state), flush=True)

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    port = server.sockets[0].getsockname()[1]  # the one given, or the one taken for port 0
    print(json.dumps({"listening": port, "target": target, "rtt_ms": rtt_ms}), flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
