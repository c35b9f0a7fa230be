//! Tiny plugins for tests, made from core WAT at test time: shared by the
//! host's in-process tests (`host/src/plugin/test_components.rs`) and the
//! end-to-end tests.
//!
//! Each is a core module exporting the `plugin` world's `commands` and
//! `handle` by the canonical ABI, wrapped into a component against the real
//! `wit/` by `wit-component` (as `wasm-tools component new` does), so the
//! tests exercise the same lifting, linking and limits as a built plugin
//! without a toolchain or a committed binary. A handler is a few lines of
//! WAT: what a test needs (a trap, a loop, a memory grow) and nothing else.

use std::path::Path;

/// What `handle` does, whatever the request.
#[derive(Debug, Clone, Copy)]
pub enum Handle {
    /// Replies `ok(text)`.
    Reply(&'static str),
    /// Replies `err(text)`.
    Refuse(&'static str),
    /// Replies `ok` with `len` zero bytes (valid UTF-8), to test reply limits.
    ReplyOfLen(u32),
    /// Replies `ok` with the request's command name.
    EchoCommand,
    /// Traps (`unreachable`), as a panic does.
    Trap,
    /// Loops forever.
    Spin,
    /// Counts down from `iterations` (about a nanosecond each), then
    /// replies `worked`.
    Work(u32),
    /// Asks for 1 GiB more memory and traps if refused, as an allocator does.
    GrowMemory,
    /// On its instance's first call, asks for 1 GiB more memory, carries on
    /// when refused and replies `survived`; every later call traps.
    GrowDeniedThenTrap,
    /// Has `memories` more memories, grows each by `pages` (64 KiB each),
    /// trapping if refused, then replies `grown`.
    GrowExtraMemories { memories: u32, pages: u32 },
}

/// Where the module keeps things in its one page of memory.
const NAMES_AT: u32 = 0;
const RECORDS_AT: u32 = 512;
const LIST_AT: u32 = 1024;
const RETURN_AT: u32 = 1536;
const TEXT_AT: u32 = 2048;
/// The bump allocator's start: the host writes requests above it.
const HEAP_AT: u32 = 8192;

/// A component that declares `commands` and answers every one as `handle` says.
pub fn component(commands: &[&str], handle: Handle) -> Vec<u8> {
    encode(&core_module(commands, handle, None), "plugin")
}

/// What a batched component's `serve-batch` does: serve, or break the
/// batch protocol in one of the ways the host must survive.
#[derive(Debug, Clone, Copy)]
pub enum ServeBatch {
    /// Serves every request it is given, replying to each with its command
    /// name, as a well-behaved plugin does.
    EchoAll,
    /// Takes one request, replies with its command name and returns: every
    /// call serves one command, however many it was given.
    OneThenReturn,
    /// Replies before taking any request.
    ReplyFirst,
    /// Takes a request, then asks for the next without replying.
    AskTwice,
    /// Returns at once, taking nothing.
    ReturnAtOnce,
    /// Takes a request and never replies, looping forever.
    TakeThenSpin,
    /// Takes the whole batch with `take-requests`, then takes it again.
    TakeAllTwice,
    /// Takes the whole batch, then asks `next-request` for more.
    TakeAllThenAsk,
    /// Takes the whole batch and returns without replying.
    TakeAllThenReturn,
}

/// A component of the `batched-plugin` world: `handle` answers as `handle`
/// says, `serve-batch` does what `serve` says.
pub fn batched_component(commands: &[&str], handle: Handle, serve: ServeBatch) -> Vec<u8> {
    encode(
        &core_module(commands, handle, Some(serve)),
        "batched-plugin",
    )
}

/// A core module wrapped into a component of `world` of the real `wit/`.
fn encode(wat: &str, world: &str) -> Vec<u8> {
    let mut module = wat::parse_str(wat).expect("test WAT parses");
    let mut resolve = wit_parser::Resolve::default();
    let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit");
    let (package, _) = resolve.push_dir(&wit).expect("wit/ parses");
    let world = resolve
        .select_world(&[package], Some(world))
        .expect("the world is in wit/");
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .expect("embed the world");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("a core module of the world")
        .validate(true)
        .encode()
        .expect("a valid component")
}

fn core_module(commands: &[&str], handle: Handle, serve: Option<ServeBatch>) -> String {
    let mut names = String::new();
    let mut records = Vec::new();
    for command in commands {
        let at = NAMES_AT + names.len() as u32;
        names.push_str(command);
        // command-info { name: string, summary: string }, the summary empty.
        for word in [at, command.len() as u32, 0, 0] {
            records.extend_from_slice(&word.to_le_bytes());
        }
    }
    assert!(names.len() < (RECORDS_AT - NAMES_AT) as usize);
    let list = [RECORDS_AT, commands.len() as u32]
        .map(u32::to_le_bytes)
        .concat();
    let text = match handle {
        Handle::Reply(text) | Handle::Refuse(text) => text,
        Handle::GrowExtraMemories { .. } => "grown",
        Handle::GrowDeniedThenTrap => "survived",
        Handle::Work(_) => "worked",
        _ => "",
    };
    let extra_memories = match handle {
        Handle::GrowExtraMemories { memories, .. } => (1..=memories)
            .map(|n| format!("(memory $m{n} 0)"))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    };
    let (batch_imports, serve_batch) = match serve {
        Some(serve) => (BATCH_IMPORTS, serve_batch(serve)),
        None => ("", String::new()),
    };
    format!(
        r#"(module
  {batch_imports}
  (memory (export "memory") 1)
  {extra_memories}
  (global $heap (mut i32) (i32.const {HEAP_AT}))
  (global $calls (mut i32) (i32.const 0))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $at i32)
    (local.set $at (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (global.set $heap (i32.add (local.get $at) (local.get 3)))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (if (i32.eq (memory.grow (i32.add (i32.shr_u (local.get 3) (i32.const 16)) (i32.const 1))) (i32.const -1))
        (then unreachable))))
    (local.get $at))
  (data (i32.const {NAMES_AT}) "{names}")
  (data (i32.const {RECORDS_AT}) "{records}")
  (data (i32.const {LIST_AT}) "{list}")
  (data (i32.const {TEXT_AT}) "{text}")
  (func (export "commands") (result i32) (i32.const {LIST_AT}))
  (func (export "handle") (param $command i32) (param $command_len i32)
      (param i32 i32 i32 i32) (result i32)
    {body})
  {serve_batch}
)"#,
        names = escape(names.as_bytes()),
        records = escape(&records),
        list = escape(&list),
        text = escape(text.as_bytes()),
        body = handle_body(handle, text.len() as u32),
    )
}

/// The body of the core `handle`: its result is a pointer to the
/// `result<string, string>` it returns (discriminant, then pointer, length).
fn handle_body(handle: Handle, text_len: u32) -> String {
    let answer = |discriminant: u32, at: &str, len: &str| {
        format!(
            "(i32.store8 (i32.const {RETURN_AT}) (i32.const {discriminant}))
    (i32.store (i32.const {ret_at}) {at})
    (i32.store (i32.const {len_at}) {len})
    (i32.const {RETURN_AT})",
            ret_at = RETURN_AT + 4,
            len_at = RETURN_AT + 8,
        )
    };
    let text_at = format!("(i32.const {TEXT_AT})");
    let text_len = format!("(i32.const {text_len})");
    match handle {
        Handle::Reply(_) => answer(0, &text_at, &text_len),
        Handle::Refuse(_) => answer(1, &text_at, &text_len),
        Handle::ReplyOfLen(len) => answer(0, "(i32.const 0)", &format!("(i32.const {len})")),
        Handle::EchoCommand => answer(0, "(local.get $command)", "(local.get $command_len)"),
        Handle::Trap => "unreachable".into(),
        Handle::Spin => "(loop $forever (br $forever)) unreachable".into(),
        Handle::Work(iterations) => format!(
            "(local.set $command_len (i32.const {iterations}))
    (loop $work
      (local.set $command_len (i32.sub (local.get $command_len) (i32.const 1)))
      (br_if $work (i32.ne (local.get $command_len) (i32.const 0))))
    {}",
            answer(0, &text_at, &text_len)
        ),
        Handle::GrowDeniedThenTrap => format!(
            "(if (global.get $calls) (then unreachable))
    (global.set $calls (i32.const 1))
    (drop (memory.grow (i32.const 16384)))
    {}",
            answer(0, &text_at, &text_len)
        ),
        Handle::GrowMemory => format!(
            "(if (i32.eq (memory.grow (i32.const 16384)) (i32.const -1)) (then unreachable))
    {}",
            answer(0, &text_at, &text_len)
        ),
        Handle::GrowExtraMemories { memories, pages } => {
            let grows: String = (1..=memories)
                .map(|n| {
                    format!(
                        "(if (i32.eq (memory.grow $m{n} (i32.const {pages})) (i32.const -1)) \
                         (then unreachable))\n    "
                    )
                })
                .collect();
            format!("{grows}{}", answer(0, &text_at, &text_len))
        }
    }
}

/// The host's `batch` functions, lowered: `next-request` writes its
/// `option<request>` where its argument points (the discriminant, then the
/// request from 4 bytes on: command, args and raw args, each a pointer and a
/// length); `reply` takes a `result<string, string>` flat (discriminant,
/// pointer, length).
/// `take-requests` (0.1.4) writes its `list<u8>` (pointer, length) where
/// its argument points.
const BATCH_IMPORTS: &str = r#"(import "plugboard:plugin/batch@0.1.3" "next-request" (func $next_request (param i32)))
  (import "plugboard:plugin/batch@0.1.3" "reply" (func $reply (param i32 i32 i32)))
  (import "plugboard:plugin/batch@0.1.4" "take-requests" (func $take_requests (param i32)))"#;

/// The core `serve-batch` export for `serve`.
fn serve_batch(serve: ServeBatch) -> String {
    let take = format!("(call $next_request (i32.const {RETURN_AT}))");
    let take_all = format!("(call $take_requests (i32.const {RETURN_AT}))");
    let reply_with_command = format!(
        "(call $reply (i32.const 0) (i32.load (i32.const {command_at})) (i32.load (i32.const {len_at})))",
        command_at = RETURN_AT + 4,
        len_at = RETURN_AT + 8,
    );
    let body = match serve {
        ServeBatch::EchoAll => format!(
            "(loop $serve
      {take}
      (if (i32.eqz (i32.load8_u (i32.const {RETURN_AT}))) (then return))
      {reply_with_command}
      (br $serve))"
        ),
        ServeBatch::OneThenReturn => format!(
            "{take}
    (if (i32.eqz (i32.load8_u (i32.const {RETURN_AT}))) (then return))
    {reply_with_command}"
        ),
        ServeBatch::ReplyFirst => {
            format!("(call $reply (i32.const 0) (i32.const {TEXT_AT}) (i32.const 0))")
        }
        ServeBatch::AskTwice => format!("{take} {take}"),
        ServeBatch::ReturnAtOnce => String::new(),
        ServeBatch::TakeThenSpin => format!("{take} (loop $forever (br $forever))"),
        ServeBatch::TakeAllTwice => format!("{take_all} {take_all}"),
        ServeBatch::TakeAllThenAsk => format!("{take_all} {take}"),
        ServeBatch::TakeAllThenReturn => take_all,
    };
    format!(r#"(func (export "serve-batch") {body})"#)
}

/// Bytes as a WAT string literal's contents.
fn escape(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("\\{byte:02x}")).collect()
}

/// `component` with a custom section of its own appended: the same code as
/// far as any engine is concerned, but other bytes, so none of the compile
/// caches keyed by the bytes has it (the incremental cache, keyed by each
/// function's code, does).
pub fn with_custom_section(component: &[u8], tag: &str) -> Vec<u8> {
    let name = b"plugboard-test";
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(tag.as_bytes());
    let mut bytes = component.to_vec();
    bytes.push(0); // a custom section
    let mut len = body.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            bytes.push(byte);
            break;
        }
        bytes.push(byte | 0x80);
    }
    bytes.extend_from_slice(&body);
    bytes
}
