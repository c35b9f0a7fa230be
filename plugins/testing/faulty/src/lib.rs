//! A test plugin that serves onoff's commands and fails them: the bad new
//! version of onoff, for the tests of guarded rollout. `on` panics (a
//! trap), `off` loops until the call's deadline (a timeout), `status` and
//! `toggle` reply `faulty`.

use plugboard_plugin::{Command, Plugin, Request};

struct Faulty;

impl Plugin for Faulty {
    const COMMANDS: &'static [Command] = &[
        Command::new("on", "Trap"),
        Command::new("off", "Loop until the deadline"),
        Command::new("status", "Reply `faulty`"),
        Command::new("toggle", "Reply `faulty`"),
    ];

    fn handle(request: Request) -> Result<String, String> {
        match request.command.as_str() {
            "on" => panic!("a faulty version"),
            "off" => loop {
                std::hint::spin_loop();
            },
            _ => Ok("faulty".into()),
        }
    }
}

plugboard_plugin::export!(Faulty);
