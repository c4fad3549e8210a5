#!/usr/bin/env python3
"""Memory of N idle keep-alive connections: opens N connections to a proxy, sends one request on
each, keeps them open and idle, and reports the proxy's RSS (VmRSS of PID) before, 1 s after the
last connection was opened, and after SETTLE seconds idle (default 5: Weir parks a connection
that has been idle for 250 ms, and the allocator returns the freed memory shortly after).

Usage: idle_conns.py PID HOST:PORT [N] [SETTLE]   (raise `ulimit -n` first; loopback only)
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
    settle = float(sys.argv[4]) if len(sys.argv) > 4 else 5.0
    held: list = []
    before = rss_kib(pid)
    ok = 0
    for start in range(0, n, 500):
        res = await asyncio.gather(*(one(host, int(port), held) for _ in range(min(500, n - start))))
        ok += sum(res)
    await asyncio.sleep(1.0)
    early = rss_kib(pid)
    await asyncio.sleep(max(settle - 1.0, 0.0))
    after = rss_kib(pid)
    # Then the gateway is busy elsewhere (100 requests on one more connection over 2 s): an
    # allocator returns freed memory lazily, on later activity (mimalloc: 1 s after the free).
    poke: list = []
    for _ in range(100):
        await one(host, int(port), poke)
        for _, w in poke:
            w.close()
        poke.clear()
        await asyncio.sleep(0.02)
    busy = rss_kib(pid)
    print(f"connections open and idle: {ok}/{n}")
    print(f"proxy RSS before: {before/1024:.1f} MiB; with {ok} idle connections: "
          f"{early/1024:.1f} MiB after 1 s, {after/1024:.1f} MiB after {settle:g} s; "
          f"per connection: {(after-before)/max(ok,1):.2f} KiB")
    print(f"after 100 requests on other connections: {busy/1024:.1f} MiB, "
          f"per idle connection: {(busy-before)/max(ok,1):.2f} KiB")
    for _, w in held:
        w.close()


asyncio.run(main())
