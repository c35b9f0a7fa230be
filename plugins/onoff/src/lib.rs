//! The on/off plugin: serves `on` and `off`, each replying `success`.
//!
//! The smallest useful plugboard plugin, and the template for new ones: list
//! the commands, handle a request, return `Ok(reply)` or `Err(message)`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugin",
});

// `use types.{...}` in the world brings `CommandInfo` and `Request` into scope.
struct OnOff;

impl Guest for OnOff {
    fn commands() -> Vec<CommandInfo> {
        vec![
            CommandInfo {
                name: "on".into(),
                summary: "Switch the device on".into(),
            },
            CommandInfo {
                name: "off".into(),
                summary: "Switch the device off".into(),
            },
        ]
    }

    fn handle(request: Request) -> Result<String, String> {
        match request.command.as_str() {
            "on" | "off" => Ok("success".into()),
            other => Err(format!("onoff does not handle '{other}'")),
        }
    }
}

export!(OnOff);
