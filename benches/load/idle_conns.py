#!/usr/bin/env python3
"""Memory of N idle keep-alive connections: opens N connections to a proxy, sends one request on
each, keeps them open and idle, and reports the proxy's RSS before; 1 s after the last connection
was opened; after SETTLE seconds idle (default 5: Weir parks a connection that has been idle for
250 ms); and after 100 more requests on other connections (an allocator returns freed memory
lazily, on later activity: mimalloc 1 s after the free). Then it checks that every connection is
still open (an idle timeout closing some would make the figure meaningless).

Usage: idle_conns.py PID[,PID...] HOST:PORT [N] [SETTLE]   (IDLE_TLS=1: over TLS, not verified)
RSS is VmRSS summed over the PIDs (nginx: master and worker). Needs `ulimit -n` above N on both
sides; loopback targets only. The last line is machine-readable:
RESULT opened still_open rss_before_kib rss_1s_kib rss_settled_kib rss_after_activity_kib
"""
import asyncio
import os
import ssl
import sys

TLS = None
if os.environ.get("IDLE_TLS") == "1":
    TLS = ssl.create_default_context()
    TLS.check_hostname = False
    TLS.verify_mode = ssl.CERT_NONE


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


async def one(host: str, port: int, held: list) -> bool:
    """One request on a new connection, kept open in `held`; False if it failed or took 10 s."""
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=TLS), 10)
        w.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await w.drain()
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await asyncio.wait_for(r.readexactly(length), 10)
        held.append((r, w))
        return True
    except Exception:
        return False


async def main() -> None:
    pids = [int(p) for p in sys.argv[1].split(",")]
    host, port = sys.argv[2].rsplit(":", 1)
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000
    settle = float(sys.argv[4]) if len(sys.argv) > 4 else 5.0
    held: list = []
    before = rss_kib(pids)
    ok = 0
    for start in range(0, n, 500):
        res = await asyncio.gather(*(one(host, int(port), held) for _ in range(min(500, n - start))))
        ok += sum(res)
    await asyncio.sleep(1.0)
    early = rss_kib(pids)
    await asyncio.sleep(max(settle - 1.0, 0.0))
    settled = rss_kib(pids)
    poke: list = []
    for _ in range(100):
        await one(host, int(port), poke)
        for _, w in poke:
            w.close()
        poke.clear()
        await asyncio.sleep(0.02)
    busy = rss_kib(pids)
    await asyncio.sleep(0.2)
    still_open = sum(1 for r, _ in held if not r.at_eof())
    per = (settled - before) / max(ok, 1)
    print(f"connections opened: {ok}/{n}, still open at the end: {still_open}")
    print(f"proxy RSS before: {before/1024:.1f} MiB; with the idle connections: "
          f"{early/1024:.1f} MiB after 1 s, {settled/1024:.1f} MiB after {settle:g} s "
          f"({per:.2f} KiB per connection), {busy/1024:.1f} MiB after 100 requests elsewhere "
          f"({(busy-before)/max(ok,1):.2f} KiB per connection)")
    print(f"RESULT {ok} {still_open} {before} {early} {settled} {busy}")
    for _, w in held:
        w.close()


asyncio.run(main())
