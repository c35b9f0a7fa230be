//! The {{name}} plugboard plugin.

wit_bindgen::generate!({
    path: "wit",
    world: "plugin",
});

use plugboard::plugin::host::{Level, log};

struct Plugin;

impl Guest for Plugin {
    /// The commands this plugin serves; the server routes them here.
    fn commands() -> Vec<CommandInfo> {
        vec![CommandInfo {
            name: "hello".into(),
            summary: "Greet the first argument (or the world)".into(),
        }]
    }

    /// `Ok(text)` is sent as `text<EOF>`, `Err(message)` as `error: message<EOF>`.
    fn handle(request: Request) -> Result<String, String> {
        match request.command.as_str() {
            "hello" => {
                let who = request.args.first().map_or("world", String::as_str);
                log(Level::Info, &format!("greeting {who}"));
                Ok(format!("hello, {who}"))
            }
            other => Err(format!("{{name}} does not handle '{other}'")),
        }
    }
}

export!(Plugin);
