#!/usr/bin/env python3
"""Memory of N idle keep-alive connections: opens N connections to a proxy, sends one request on
each, keeps them open and idle, and reports the proxy's RSS (VmRSS of PID) before and after.

Usage: idle_conns.py PID HOST:PORT [N]   (raise `ulimit -n` first; loopback targets only)
"""
import asyncio
import sys


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def one(host: str, port: int, held: list) -> bool:
    try:
        r, w = await asyncio.open_connection(host, port)
        w.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await r.readexactly(length)
        held.append((r, w))
        return True
    except Exception:
        return False


async def main() -> None:
    pid = int(sys.argv[1])
    host, port = sys.argv[2].rsplit(":", 1)
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000
    held: list = []
    before = rss_kib(pid)
    ok = 0
    for start in range(0, n, 500):
        res = await asyncio.gather(*(one(host, int(port), held) for _ in range(min(500, n - start))))
        ok += sum(res)
    await asyncio.sleep(1.0)
    after = rss_kib(pid)
    print(f"connections open and idle: {ok}/{n}")
    print(f"proxy RSS before: {before/1024:.1f} MiB, with {ok} idle connections: {after/1024:.1f} MiB, "
          f"per connection: {(after-before)/max(ok,1):.2f} KiB")
    for _, w in held:
        w.close()


asyncio.run(main())
