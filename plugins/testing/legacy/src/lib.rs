//! A plugin built against the frozen 0.1.0 contract (`wit/` beside this
//! file): proves that extending the WIT package keeps built plugins loading.

wit_bindgen::generate!({
    path: "wit",
    world: "plugin",
});

struct Legacy;

impl Guest for Legacy {
    fn commands() -> Vec<CommandInfo> {
        vec![CommandInfo {
            name: "legacy".into(),
            summary: "Reply from a plugin built against plugboard:plugin@0.1.0".into(),
        }]
    }

    fn handle(_request: Request) -> Result<String, String> {
        plugboard::plugin::host::log(plugboard::plugin::host::Level::Info, "legacy called");
        Ok("legacy ok".into())
    }
}

export!(Legacy);
