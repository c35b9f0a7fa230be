"""The notify plugin: sends a message to a webhook over HTTP.

`notify the door is open` POSTs `{"text": "the door is open"}` as JSON to the
URL in the plugin's config and replies `sent (HTTP 200)`. Works with any
service that takes a JSON webhook (Home Assistant, ntfy, Slack-style chat
hooks, a script of your own):

    [plugins.notify]
    allow_http = ["http://192.168.1.10:8123"]
    [plugins.notify.config]
    url = "http://192.168.1.10:8123/api/webhook/door"

Written in Python against plugboard's `http-plugin` world (`wit/http.wit`),
built with componentize-py. Without the grant the request never leaves the
sandbox: the reply says which origin to grant.
"""

import json

import wit_world
from componentize_py_types import Err, Ok
from wit_world.imports import config, outgoing_handler, streams
from wit_world.imports import plugboard_plugin_types as types
from wit_world.imports import wasi_http_types as http

# What `blocking-write-and-flush` takes at once, and what one read asks for.
WRITE_CHUNK = 4096
READ_CHUNK = 64 * 1024


class WitWorld(wit_world.WitWorld):
    def commands(self) -> list[types.CommandInfo]:
        return [types.CommandInfo("notify", "Send the text to the webhook in the config")]

    def handle(self, request: types.Request) -> str:
        if request.command != "notify":
            raise Err(f"unexpected command '{request.command}'")
        if not request.raw_args:
            raise Err("notify needs a message, e.g. `notify the door is open`")
        url = config.get("url")
        if url is None:
            raise Err("no webhook: set url in [plugins.notify.config]")
        payload = json.dumps({"text": request.raw_args}).encode()
        status, body = post(url, [("content-type", b"application/json")], payload)
        if not 200 <= status < 300:
            raise Err(f"the webhook answered HTTP {status}: {body[:200].decode(errors='replace')}")
        return f"sent (HTTP {status})"


def post(url: str, headers: list[tuple[str, bytes]], payload: bytes) -> tuple[int, bytes]:
    """POSTs `payload` to `url`; returns the status and the whole body.

    Blocking calls on `wasi:http` directly: a plugin call is synchronous, and
    the host gives the call's CPU place to others while it waits.
    """
    scheme, authority, path = split_url(url)
    # A length rather than a chunked body: small webhook receivers often
    # read only `content-length`.
    headers = headers + [("content-length", str(len(payload)).encode())]
    request = http.OutgoingRequest(http.Fields.from_list(headers))
    request.set_method(http.Method_Post())
    request.set_scheme(scheme)
    request.set_authority(authority)
    request.set_path_with_query(path)
    outgoing = request.body()
    try:
        pending = outgoing_handler.handle(request, None)
    except Err as err:
        raise Err(describe(err.value, url))
    try:
        with outgoing.write() as stream:
            for start in range(0, len(payload), WRITE_CHUNK):
                stream.blocking_write_and_flush(payload[start : start + WRITE_CHUNK])
        http.OutgoingBody.finish(outgoing, None)
    except Err:
        # The request ended before its body went out (denied, refused):
        # the response's error says why.
        pass
    with pending.subscribe() as ready:
        ready.block()
    answer = pending.get()
    if answer is None or isinstance(answer, Err) or isinstance(answer.value, Err):
        code = answer.value.value if answer is not None and isinstance(answer.value, Err) else None
        raise Err(describe(code, url))
    response = answer.value.value
    return response.status(), read_body(response.consume())


def read_body(body: http.IncomingBody) -> bytes:
    chunks = []
    with body.stream() as stream:
        while True:
            try:
                chunks.append(stream.blocking_read(READ_CHUNK))
            except Err as err:
                if isinstance(err.value, streams.StreamError_Closed):
                    break
                raise Err("the webhook's answer broke off")
    return b"".join(chunks)


def split_url(url: str) -> tuple[http.Scheme, str, str]:
    for prefix, scheme in (("http://", http.Scheme_Http()), ("https://", http.Scheme_Https())):
        if url.startswith(prefix):
            rest = url[len(prefix) :]
            authority, slash, path = rest.partition("/")
            if not authority:
                break
            return scheme, authority, slash + path
    raise Err(f"not an http:// or https:// URL: {url}")


def describe(code, url: str) -> str:
    """An error code as the author and the operator can act on it."""
    if isinstance(code, http.ErrorCode_HttpRequestDenied):
        return f"denied: {url} is not granted (add its origin to allow_http)"
    if isinstance(code, http.ErrorCode_ConnectionTimeout):
        return f"{url} did not answer in time"
    if isinstance(code, http.ErrorCode_ConnectionRefused):
        return f"{url} refused the connection"
    name = type(code).__name__.removeprefix("ErrorCode_") if code is not None else "no response"
    return f"request to {url} failed: {name}"
