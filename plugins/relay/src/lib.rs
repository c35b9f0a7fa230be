//! The relay plugin: switches a real device through its HTTP API.
//!
//! `relay-on`, `relay-off` and `relay-status` reply `on` or `off`, as the
//! device reports it. The device is the plugin's config: `url` (its base,
//! say `http://192.168.1.40`) and `firmware`: `tasmota` (the default;
//! `GET /cm?cmnd=Power%20On` answers `{"POWER":"ON"}`) or `shelly`
//! (`GET /relay/0?turn=on` answers `{"ison":true,...}`). The operator grants
//! the origin:
//!
//! ```toml
//! [plugins.relay]
//! allow_http = ["http://192.168.1.40"]
//! [plugins.relay.config]
//! url = "http://192.168.1.40"
//! firmware = "tasmota"
//! ```

use plugboard_plugin::{Command, Plugin, Request, config, http};

struct Relay;

impl Plugin for Relay {
    const COMMANDS: &'static [Command] = &[
        Command::new("relay-on", "Switch the relay on; reply with its state"),
        Command::new("relay-off", "Switch the relay off; reply with its state"),
        Command::new("relay-status", "Ask the relay whether it is on or off"),
    ];

    fn handle(request: Request) -> Result<String, String> {
        let device = Device::from_config()?;
        let wanted = match request.command.as_str() {
            "relay-on" => Some(true),
            "relay-off" => Some(false),
            _ => None,
        };
        let on = device.switch(wanted)?;
        Ok(if on { "on" } else { "off" }.into())
    }
}

plugboard_plugin::export!(Relay);

enum Firmware {
    Tasmota,
    Shelly,
}

struct Device {
    url: String,
    firmware: Firmware,
}

impl Device {
    fn from_config() -> Result<Self, String> {
        let url = config::get("url")
            .ok_or("no device: set `url` in [plugins.relay.config] (and grant it in allow_http)")?;
        let firmware = match config::get("firmware").as_deref() {
            None | Some("tasmota") => Firmware::Tasmota,
            Some("shelly") => Firmware::Shelly,
            Some(other) => return Err(format!("unknown firmware {other:?}: tasmota or shelly")),
        };
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            firmware,
        })
    }

    /// Switches the relay (`None`: only asks) and returns its state.
    fn switch(&self, on: Option<bool>) -> Result<bool, String> {
        let path = match (&self.firmware, on) {
            (Firmware::Tasmota, Some(true)) => "/cm?cmnd=Power%20On",
            (Firmware::Tasmota, Some(false)) => "/cm?cmnd=Power%20Off",
            (Firmware::Tasmota, None) => "/cm?cmnd=Power",
            (Firmware::Shelly, Some(true)) => "/relay/0?turn=on",
            (Firmware::Shelly, Some(false)) => "/relay/0?turn=off",
            (Firmware::Shelly, None) => "/relay/0",
        };
        let response = http::get(&format!("{}{path}", self.url), &[])
            .map_err(|err| format!("device unreachable: {err}"))?;
        if response.status != 200 {
            return Err(format!("device answered HTTP {}", response.status));
        }
        let text = response.text().replace(' ', "");
        let state = match self.firmware {
            Firmware::Tasmota if text.contains("\"POWER\":\"ON\"") => Some(true),
            Firmware::Tasmota if text.contains("\"POWER\":\"OFF\"") => Some(false),
            Firmware::Shelly if text.contains("\"ison\":true") => Some(true),
            Firmware::Shelly if text.contains("\"ison\":false") => Some(false),
            _ => None,
        };
        state.ok_or_else(|| format!("unexpected answer from the device: {text}"))
    }
}
