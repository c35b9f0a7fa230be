"""plugboard's Python SDK: a plugin's WitWorld subclasses `Plugin` and writes
`commands` and `handle`; `Plugin` serves a client's pipelined commands (the
`batched-plugin` world's `serve_batch`) through `handle`.

A call into the plugin costs more than a small command, so the server hands
over every command a client sent at once: `batch.take_requests()` gives them
as one buffer (one crossing for them all), decoded here; each reply goes back
with `batch.reply` before the next command is served, so the replies before a
failure are kept and no command runs twice.
"""

import struct

import wit_world
from componentize_py_types import Err, Ok
from wit_world.imports import batch, types


class Plugin(wit_world.WitWorld):
    def serve_batch(self) -> None:
        for request in requests(batch.take_requests()):
            try:
                reply = Ok(self.handle(request))
            except Err as err:
                reply = err
            batch.reply(reply)


def requests(buffer: bytes):
    """The requests of a `take_requests` buffer, in order (the layout is in
    the WIT: little-endian u32 counts and lengths, UTF-8 strings). Written
    out flat: in CPython a helper function per field costs twice the time."""
    unpack = struct.unpack_from
    (count,) = unpack("<I", buffer, 0)
    at = 4
    for _ in range(count):
        (length,) = unpack("<I", buffer, at)
        at += 4
        command = buffer[at : at + length].decode()
        at += length
        (length,) = unpack("<I", buffer, at)
        at += 4
        raw_args = buffer[at : at + length].decode()
        at += length
        (count_args,) = unpack("<I", buffer, at)
        at += 4
        args = []
        for _ in range(count_args):
            (length,) = unpack("<I", buffer, at)
            at += 4
            args.append(buffer[at : at + length].decode())
            at += length
        yield types.Request(command, args, raw_args)
