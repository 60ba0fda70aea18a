"""How long a payload takes through ``tc tbf`` at 5 Mbit/s with bench/netlink.py's bucket and with a small one.

    sudo PYTHONPATH=. .venv/bin/python bench/tbf_burst.py      # a few seconds; needs root and iproute2

Two namespaces of its own (``q7-e``/``q7-c``, not the netlink testbed's, so it can run beside it) joined by a
veth pair without GSO, shaped like bench/netlink.py's link; a client sends 2, 16 and 64 KB one connection at a
time, 0.3 s apart (the bucket refills, as between sequential requests), and times until the server's one-byte
acknowledgement. With :func:`bench.netlink.default_burst` (16 KB) a 16 KB payload crosses at the veth's speed;
with :func:`bench.netlink.packet_burst` it takes about its time at the rate.
Output: bench/results/tbf_burst.txt (this script's stdout).
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time

from bench.netlink import Link, default_burst, packet_burst, veth_pair

__all__ = ["main"]

NS_A, NS_B, DEV_A, DEV_B = "q7-e", "q7-c", "q7-e0", "q7-c0"
SERVER = ("10.232.0.2", 7777)
LINK = Link("5mbit", "50ms")
SIZES = (2_000, 16_000, 64_000)


def _run(*command: str) -> None:
    subprocess.run(command, check=True)


def _setup() -> None:
    _teardown()
    veth_pair(((NS_A, DEV_A, "10.232.0.1"), (NS_B, DEV_B, SERVER[0])))


def _teardown() -> None:
    for ns in (NS_A, NS_B):
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL, check=False)


def _in(ns: str, *args: str) -> list[str]:
    return ["nsenter", f"--net=/var/run/netns/{ns}", sys.executable, "-m", "bench.tbf_burst", *args]


def _serve() -> None:
    listener = socket.create_server(SERVER)
    while True:
        connection, _ = listener.accept()
        with connection:
            size, received = int.from_bytes(connection.recv(8, socket.MSG_WAITALL), "big"), 0
            while received < size:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                received += len(chunk)
            connection.sendall(b"k")


def _client() -> None:
    for size in SIZES:
        times = []
        for _ in range(5):
            time.sleep(0.3)
            connection = socket.create_connection(SERVER)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            started = time.perf_counter()
            connection.sendall(size.to_bytes(8, "big") + b"x" * size)
            connection.recv(1)
            times.append((time.perf_counter() - started) * 1000)
            connection.close()
        at_rate = size * 1514 / 1448 * 8 / LINK.bandwidth_bps * 1000
        print(
            f"  {size:>6,} B: min {min(times):.1f} ms, median {statistics.median(times):.1f} ms "
            f"(at the rate, with framing: {at_rate:.1f} ms)",
            flush=True,
        )


def main() -> None:
    if sys.argv[1:] == ["--serve"]:
        _serve()
        return
    if sys.argv[1:] == ["--client"]:
        _client()
        return
    _setup()
    server = subprocess.Popen(_in(NS_B, "--serve"))
    try:
        time.sleep(1.0)
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, tc tbf rate {LINK.rate} both ways, no delay")
        for name, burst in (("default_burst", default_burst(LINK)), ("packet_burst", packet_burst(LINK))):
            for ns, dev in ((NS_A, DEV_A), (NS_B, DEV_B)):
                _run("tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", LINK.rate,
                     "burst", str(burst), "latency", "2s")  # fmt: skip
            shown = subprocess.run(["tc", "-n", NS_A, "qdisc", "show", "dev", DEV_A], capture_output=True, text=True)
            print(f"{name}: {burst} B ({shown.stdout.strip()})", flush=True)
            subprocess.run(_in(NS_A, "--client"), check=True)
    finally:
        server.kill()
        server.wait()
        _teardown()


if __name__ == "__main__":
    main()
