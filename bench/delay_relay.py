"""A TCP relay that delays every byte by a fixed one-way time in each direction: the propagation delay
of an emulated link where the kernel has no ``netem`` qdisc (``tc tbf``/``htb`` shape only the rate).

    python bench/delay_relay.py --listen 127.0.0.1:9001 --upstream 10.231.0.2:8001 --delay-file /tmp/d

The one-way delay in milliseconds is read from ``--delay-file`` (re-read every 200 ms, so a benchmark can
change it without dropping connections). Data read at time t is written out at t + delay, in order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path

__all__ = ["main"]


class Delay:
    def __init__(self, path: Path) -> None:
        self.path, self.seconds = path, 0.0

    def refresh(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.seconds = max(0.0, float(self.path.read_text().strip() or 0) / 1000)

    async def watch(self) -> None:
        while True:
            self.refresh()
            await asyncio.sleep(0.2)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Delay) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    delivery = asyncio.create_task(deliver())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((loop.time() + delay.seconds, data))
    except (ConnectionError, OSError):
        pass
    queue.put_nowait((loop.time() + delay.seconds, b""))
    with contextlib.suppress(ConnectionError, OSError):
        await delivery


async def _serve(listen: tuple[str, int], upstream: tuple[str, int], delay: Delay) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*upstream)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pump(client_reader, server_writer, delay), _pump(server_reader, client_writer, delay))
        for writer in (client_writer, server_writer):
            writer.close()

    watcher = asyncio.create_task(delay.watch())
    server = await asyncio.start_server(handle, *listen)
    async with server:
        await server.serve_forever()
    watcher.cancel()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=_address, required=True)
    parser.add_argument("--upstream", type=_address, required=True)
    parser.add_argument("--delay-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.listen, args.upstream, Delay(args.delay_file)))


if __name__ == "__main__":
    main()
