"""The {{name}} plugboard plugin."""

import plugboard
from componentize_py_types import Err
from wit_world.imports import host, types

COMMAND = "{{name}}"


# plugboard.Plugin serves a client's pipelined commands through `handle`.
class WitWorld(plugboard.Plugin):
    def commands(self) -> list[types.CommandInfo]:
        """The commands this plugin serves; the server routes them here."""
        return [types.CommandInfo(COMMAND, "Greet the first argument (or the world)")]

    def handle(self, request: types.Request) -> str:
        """Return the reply (`text<EOF>`); raise Err(message) for `error: message<EOF>`."""
        if request.command != COMMAND:
            raise Err(f"{COMMAND} does not handle '{request.command}'")
        who = request.args[0] if request.args else "world"
        host.log(host.Level.INFO, f"greeting {who}")
        # To run another command, as a client would send it (grant it in
        # `allow_commands` of [plugins.{{name}}] in the server's config):
        #     from wit_world.imports import commands
        #     reply = commands.call("on")  # raises Err(message) for an error reply
        return f"hello, {who}"
