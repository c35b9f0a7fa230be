//! A test plugin with one command per behaviour the end-to-end tests provoke.

use plugboard_plugin::{Command, Plugin, Request, commands, kv, log, schedule};

struct Echo;

impl Plugin for Echo {
    const COMMANDS: &'static [Command] = &[
        Command::new("echo", "Reply with the arguments, as sent"),
        Command::new("fail", "Refuse with the arguments as the error message"),
        Command::new("panic", "Panic (traps the instance)"),
        Command::new("sleep", "Sleep for the given milliseconds, then reply"),
        Command::new(
            "print",
            "Write the arguments to stdout, stderr and the host log",
        ),
        Command::new("delimiter", "Reply with text containing <EOF>"),
        Command::new("kv-set", "Store the second argument under the first"),
        Command::new("kv-get", "Reply with the value stored under the argument"),
        Command::new("kv-count", "Increment the counter named by the argument"),
        Command::new("kv-del", "Delete the key named by the argument"),
        Command::new(
            "kv-list",
            "Reply with the keys that start with the argument, space-separated",
        ),
        Command::new(
            "call",
            "Run the argument as a command, reply with its reply",
        ),
        Command::new(
            "sched-add",
            "Add a schedule of its own: `sched-add NAME|CRON|COMMAND`",
        ),
        Command::new("sched-del", "Remove its schedule NAME"),
        Command::new(
            "sched-list",
            "List its schedules, `NAME|CRON|COMMAND` a line",
        ),
        Command::new(
            "kv-fill",
            "Store N bytes under a key: `kv-fill KEY N` (fills a disk fast)",
        ),
        Command::new(
            "args",
            "Reply with the command, its words and raw arguments, delimited",
        ),
    ];

    fn handle(request: Request) -> Result<String, String> {
        match request.command.as_str() {
            "echo" => Ok(request.raw_args),
            "args" => Ok(format!(
                "{}/{}:[{}]/[{}]",
                request.command,
                request.args.len(),
                request.args.join("|"),
                request.raw_args
            )),
            "call" => commands::call(&request.raw_args),
            "sched-add" => match request.raw_args.splitn(3, '|').collect::<Vec<_>>()[..] {
                [name, cron, command] => {
                    schedule::add(name, cron, command).map(|()| "added".into())
                }
                _ => Err("sched-add NAME|CRON|COMMAND".into()),
            },
            "sched-del" => schedule::remove(&request.raw_args).map(|had| had.to_string()),
            "sched-list" => schedule::entries().map(|entries| {
                let lines: Vec<String> = entries
                    .iter()
                    .map(|e| format!("{}|{}|{}", e.name, e.cron, e.command))
                    .collect();
                lines.join("\n")
            }),
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
                log::warn(&format!("log: {}", request.raw_args));
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
            "kv-del" => match kv::delete(&request.raw_args).map_err(|err| format!("{err:?}"))? {
                true => Ok("deleted".into()),
                false => Ok("(none)".into()),
            },
            "kv-list" => kv::list_keys(&request.raw_args)
                .map(|keys| keys.join(" "))
                .map_err(|err| format!("{err:?}")),
            "kv-fill" => {
                let (key, len) = request.raw_args.split_once(' ').ok_or("kv-fill KEY N")?;
                let len: usize = len.parse().map_err(|_| "N is a byte count")?;
                kv::set(key, &vec![b'x'; len]).map_err(|err| format!("{err:?}"))?;
                Ok("stored".into())
            }
            other => Err(format!("unexpected command '{other}'")),
        }
    }
}

plugboard_plugin::export!(Echo);
