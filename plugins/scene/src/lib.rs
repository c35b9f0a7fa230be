//! The scene plugin: one command that drives several devices.
//!
//! `scene NAME` runs the commands its config key `NAME` lists, separated by
//! `;`, in order, through the server (`commands.call`), and replies one line
//! per command, `<command>: <reply>`. It stops at the first error reply:
//! the error's first line says which command failed, the lines after it
//! what ran. The commands must be granted in `allow_commands`:
//!
//! ```toml
//! [plugins.scene]
//! allow_commands = ["on", "off", "relay-*"]
//! [plugins.scene.config]
//! night = "off; relay-set 1 off"
//! ```

use plugboard_plugin::{Command, Plugin, Request, commands, config};

struct Scene;

impl Plugin for Scene {
    const COMMANDS: &'static [Command] = &[Command::new(
        "scene",
        "Run the commands of the scene NAME (a key of the plugin's config), in order",
    )];

    fn handle(request: Request) -> Result<String, String> {
        let name = request.raw_args.as_str();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err("usage: scene NAME, where NAME is a key of [plugins.scene.config]".into());
        }
        let Some(steps) = config::get(name) else {
            return Err(format!(
                "no scene '{name}': add {name} = \"command; command\" to [plugins.scene.config]"
            ));
        };
        run(name, &steps)
    }
}

plugboard_plugin::export!(Scene);

/// Runs the `;`-separated commands of `steps` in order, stopping at the
/// first that fails.
fn run(name: &str, steps: &str) -> Result<String, String> {
    let steps: Vec<&str> = steps
        .split(';')
        .map(str::trim)
        .filter(|step| !step.is_empty())
        .collect();
    let mut lines = Vec::with_capacity(steps.len());
    for (index, step) in steps.iter().enumerate() {
        match commands::call(step) {
            Ok(reply) => lines.push(format!("{step}: {reply}")),
            Err(message) => {
                lines.push(format!("{step}: error: {message}"));
                return Err(format!(
                    "scene '{name}' stopped at command {} of {} ('{step}')\n{}",
                    index + 1,
                    steps.len(),
                    lines.join("\n")
                ));
            }
        }
    }
    Ok(lines.join("\n"))
}
