//! A test plugin that claims `on`, which onoff also serves: for the tests of
//! command conflicts (and, later, of replacing a plugin with another version).

wit_bindgen::generate!({
    path: "../../../wit",
    world: "plugin",
});

struct Rival;

impl Guest for Rival {
    fn commands() -> Vec<CommandInfo> {
        vec![CommandInfo {
            name: "on".into(),
            summary: "Claim `on` to test conflicts".into(),
        }]
    }

    fn handle(_request: Request) -> Result<String, String> {
        Ok("rival on".into())
    }
}

export!(Rival);
