//! A test plugin with one command per behaviour the end-to-end tests provoke.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "plugin",
});

use plugboard::plugin::host::{Level, log};
use plugboard::plugin::kv;

struct Echo;

fn command(name: &str, summary: &str) -> CommandInfo {
    CommandInfo {
        name: name.into(),
        summary: summary.into(),
    }
}

impl Guest for Echo {
    fn commands() -> Vec<CommandInfo> {
        vec![
            command("echo", "Reply with the arguments, as sent"),
            command("fail", "Refuse with the arguments as the error message"),
            command("panic", "Panic (traps the instance)"),
            command("sleep", "Sleep for the given milliseconds, then reply"),
            command(
                "print",
                "Write the arguments to stdout, stderr and the host log",
            ),
            command("delimiter", "Reply with text containing <EOF>"),
            command("kv-set", "Store the second argument under the first"),
            command("kv-get", "Reply with the value stored under the argument"),
            command("kv-count", "Increment the counter named by the argument"),
        ]
    }

    fn handle(request: Request) -> Result<String, String> {
        match request.command.as_str() {
            "echo" => Ok(request.raw_args),
            "fail" => Err(request.raw_args),
            "panic" => panic!("deliberate panic for a test"),
            "sleep" => {
                let ms: u64 = request
                    .raw_args
                    .parse()
                    .map_err(|_| "sleep takes milliseconds")?;
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Ok(format!("slept {ms}"))
            }
            "print" => {
                println!("stdout: {}", request.raw_args);
                eprintln!("stderr: {}", request.raw_args);
                log(Level::Warn, &format!("log: {}", request.raw_args));
                Ok("printed".into())
            }
            "delimiter" => Ok("before<EOF>after".into()),
            "kv-set" => {
                let (key, value) = request
                    .raw_args
                    .split_once(' ')
                    .unwrap_or((&request.raw_args, ""));
                kv::set(key, value.as_bytes()).map_err(|err| format!("{err:?}"))?;
                Ok("stored".into())
            }
            "kv-get" => match kv::get(&request.raw_args).map_err(|err| format!("{err:?}"))? {
                Some(value) => Ok(String::from_utf8_lossy(&value).into_owned()),
                None => Ok("(none)".into()),
            },
            "kv-count" => kv::increment(&request.raw_args, 1)
                .map(|n| n.to_string())
                .map_err(|err| format!("{err:?}")),
            other => Err(format!("unexpected command '{other}'")),
        }
    }
}

export!(Echo);
