//! The {{name}} plugboard plugin.

use plugboard_plugin::{Command, Plugin, Request, log};

struct {{type}};

impl Plugin for {{type}} {
    /// The commands this plugin serves; the server routes them here.
    const COMMANDS: &'static [Command] = &[Command::new(
        "{{name}}",
        "Greet the first argument (or the world)",
    )];

    /// `Ok(text)` is sent as `text<EOF>`, `Err(message)` as `error: message<EOF>`.
    fn handle(request: Request) -> Result<String, String> {
        let who = request.args.first().map_or("world", String::as_str);
        log::info(&format!("greeting {who}"));
        Ok(format!("hello, {who}"))
    }
}

plugboard_plugin::export!({{type}});
