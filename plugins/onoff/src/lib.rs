//! The on/off plugin: a switch whose state lives in the host's key-value
//! store, so it outlives a call, a hot reload and a restart.
//!
//! `on` and `off` reply `success`; `status` replies `on` or `off` (`off`
//! before any command), prefixed with the device's name when the config
//! names one (`[plugins.onoff.config] device = "lamp"` gives `lamp: on`);
//! `toggle` flips the state atomically and replies with the new one.

use plugboard_plugin::{Command, Plugin, Request, config, kv};

/// The key the switch's state is kept under.
const STATE: &str = "state";

struct OnOff;

impl Plugin for OnOff {
    const COMMANDS: &'static [Command] = &[
        Command::new("on", "Switch the device on"),
        Command::new("off", "Switch the device off"),
        Command::new("status", "Say whether the device is on or off"),
        Command::new("toggle", "Flip the device, reply with its new state"),
    ];

    fn handle(request: Request) -> Result<String, String> {
        match request.command.as_str() {
            "on" => switch(true).map(|()| "success".into()),
            "off" => switch(false).map(|()| "success".into()),
            "status" => status().map(describe),
            _ => toggle().map(describe),
        }
    }
}

plugboard_plugin::export!(OnOff);

fn word(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

fn describe(on: bool) -> String {
    match config::get("device") {
        Some(device) => format!("{device}: {}", word(on)),
        None => word(on).into(),
    }
}

fn store_error(err: kv::Error) -> String {
    format!("cannot record the device state: {err}")
}

/// Writes only when the state changes: a durable write costs a disk sync,
/// a read almost nothing, and `on` when already on changes nothing.
fn switch(on: bool) -> Result<(), String> {
    if status()? == on {
        return Ok(());
    }
    kv::set_string(STATE, word(on)).map_err(store_error)
}

fn status() -> Result<bool, String> {
    Ok(kv::get_string(STATE).map_err(store_error)?.as_deref() == Some("on"))
}

/// Read, then swap only if nobody changed the state meanwhile: concurrent
/// toggles from several clients each flip it exactly once.
fn toggle() -> Result<bool, String> {
    loop {
        let current = kv::get(STATE).map_err(store_error)?;
        let on = current.as_deref() == Some(b"on");
        let flipped = word(!on).as_bytes();
        if kv::compare_and_swap(STATE, current.as_deref(), flipped).map_err(store_error)? {
            return Ok(!on);
        }
    }
}
