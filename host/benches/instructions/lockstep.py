# Drives exactly TOTAL commands at CONNS x DEPTH against HOST:PORT in lockstep:
# each connection writes DEPTH commands at once and waits for all DEPTH replies
# before the next write, so the server reads (and batches) DEPTH at a time
# whatever the timing: instruction counts per command stop depending on it.
# DEPTH 0: a connection per command (connect, one command, its reply, close).
import asyncio, sys
host, port, conns, depth, total, cmd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
msg = (cmd + "<EOF>").encode()
per_conn = total // conns
async def reconnecting():
    errs = 0
    for _ in range(per_conn):
        r, w = await asyncio.open_connection(host, port)
        w.write(msg)
        buf = b""
        while b"<EOF>" not in buf:
            data = await r.read(65536)
            if not data: raise SystemExit("closed")
            buf += data
        errs += buf.count(b"error:")
        w.close()
        await w.wait_closed()
    return errs
async def one():
    if depth == 0:
        return await reconnecting()
    r, w = await asyncio.open_connection(host, port)
    got = errs = 0
    while got < per_conn:
        n = min(depth, per_conn - got)
        w.write(msg * n)
        buf = b""
        while buf.count(b"<EOF>") < n:
            data = await r.read(65536)
            if not data: raise SystemExit("closed")
            buf += data
        errs += buf.count(b"error:")
        got += n
    w.close()
    return errs
async def main():
    errs = sum(await asyncio.gather(*[one() for _ in range(conns)]))
    print(f"done {per_conn*conns} errors {errs}")
asyncio.run(main())
