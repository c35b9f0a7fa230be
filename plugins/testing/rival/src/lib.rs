//! A test plugin that claims `on`, which onoff also serves: for the tests of
//! command conflicts (and, later, of replacing a plugin with another version).

use plugboard_plugin::{Command, Plugin, Request};

struct Rival;

impl Plugin for Rival {
    const COMMANDS: &'static [Command] = &[Command::new("on", "Claim `on` to test conflicts")];

    fn handle(_request: Request) -> Result<String, String> {
        Ok("rival on".into())
    }
}

plugboard_plugin::export!(Rival);
