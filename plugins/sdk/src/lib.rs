//! Write a plugboard plugin in Rust:
//! implement [`Plugin`], call [`export!`], build for `wasm32-wasip2`.
//!
//! The SDK hides wit-bindgen's generated code behind a small surface: the
//! commands as a table, one handler, and typed access to what the host
//! offers ([`log`], [`config`], [`kv`]). It is generated from the same WIT
//! package as the host (`wit/`), so it cannot drift from the contract.
//!
//! # A complete plugin
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! plugboard-plugin = { path = "../sdk" }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```ignore
//! use plugboard_plugin::{Command, Plugin, Request, kv, log};
//!
//! struct Counter;
//!
//! impl Plugin for Counter {
//!     const COMMANDS: &'static [Command] = &[
//!         Command::new("count", "Count calls, reply with the total"),
//!         Command::new("hello", "Greet the first argument"),
//!     ];
//!
//!     fn handle(request: Request) -> Result<String, String> {
//!         match request.command.as_str() {
//!             "count" => kv::increment("calls", 1)
//!                 .map(|n| n.to_string())
//!                 .map_err(|err| format!("cannot count: {err}")),
//!             "hello" => {
//!                 log::info("saying hello");
//!                 Ok(format!("hello, {}", request.args.first().map_or("world", String::as_str)))
//!             }
//!             _ => unreachable!("the SDK only routes listed commands here"),
//!         }
//!     }
//! }
//!
//! plugboard_plugin::export!(Counter);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` and copy
//! `target/wasm32-wasip2/release/<crate>.wasm` into the server's plugin
//! directory; `plugboard check <file>` says whether the server will load it.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        // `plugin` plus `serve-batch`: every SDK plugin serves a client's
        // pipelined commands in one call (see `__serve_batch`).
        world: "batched-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "plugboard_plugin::bindings",
    });
}

use bindings::plugboard::plugin as wit;

/// One client message: the command name, its arguments split on whitespace
/// (`args`), and everything after the name as typed (`raw_args`).
pub use wit::types::Request;

/// A command the plugin serves, with a one-line summary for humans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    pub name: &'static str,
    pub summary: &'static str,
}

impl Command {
    pub const fn new(name: &'static str, summary: &'static str) -> Self {
        Self { name, summary }
    }
}

/// A plugboard plugin. The host routes each message whose first word is one
/// of [`Plugin::COMMANDS`] to [`Plugin::handle`], in an instance of the
/// plugin owned by the client's connection: memory may carry over between one
/// client's commands, never between clients; durable state belongs in [`kv`].
pub trait Plugin {
    /// The commands this plugin serves. Names are non-empty, without whitespace.
    const COMMANDS: &'static [Command];

    /// Handles one request for one of [`Plugin::COMMANDS`]. `Ok(text)` is sent
    /// to the client as `text<EOF>`, `Err(message)` as `error: message<EOF>`.
    fn handle(request: Request) -> Result<String, String>;
}

/// Writing to the host's log, tagged with the plugin's name.
pub mod log {
    use super::wit::host::{self, Level};

    pub fn trace(message: &str) {
        host::log(Level::Trace, message);
    }
    pub fn debug(message: &str) {
        host::log(Level::Debug, message);
    }
    pub fn info(message: &str) {
        host::log(Level::Info, message);
    }
    pub fn warn(message: &str) {
        host::log(Level::Warn, message);
    }
    pub fn error(message: &str) {
        host::log(Level::Error, message);
    }
}

/// The plugin's own settings: its `[plugins.<name>.config]` table.
pub mod config {
    /// The value of `key`, if the server's config sets it.
    pub fn get(key: &str) -> Option<String> {
        super::wit::config::get(key)
    }
}

/// Running other commands, as a client would send them, for a plugin the
/// operator granted them in `allow_commands` of its `[plugins.<name>]`
/// table (say `allow_commands = ["on", "relay-*"]`).
pub mod commands {
    /// Runs the command line `line` and returns its reply: `Ok(text)`, or
    /// `Err(message)` for an error reply (without `error: `). A command
    /// not granted, a call nested too deep or back to a command already
    /// running in the chain are errors too. Its time counts in this call's
    /// deadline.
    pub fn call(line: &str) -> Result<String, String> {
        super::wit::commands::call(line)
    }
}

/// The plugin's own schedules: command lines the server runs on time for
/// it, as [`commands::call`] would (so only commands its `allow_commands`
/// grants). Kept with its state, they outlive a reload and a restart, and
/// run while the plugin is loaded; at most 16.
pub mod schedule {
    pub use super::wit::schedule::Entry;

    /// Adds the schedule `name` (or replaces it): `cron` has 5 fields, or 6
    /// with seconds first, in the host's time zone; `command` is the line
    /// each run sends.
    pub fn add(name: &str, cron: &str, command: &str) -> Result<(), String> {
        super::wit::schedule::add(&Entry {
            name: name.into(),
            cron: cron.into(),
            command: command.into(),
        })
    }

    /// Removes the schedule `name`; whether there was one.
    pub fn remove(name: &str) -> Result<bool, String> {
        super::wit::schedule::remove(name)
    }

    /// The plugin's schedules, by name.
    pub fn entries() -> Result<Vec<Entry>, String> {
        super::wit::schedule::entries()
    }
}

/// Durable key-value state in the plugin's own namespace. [`Error`]
/// implements `std::error::Error` and `Display`.
pub mod kv {
    pub use super::wit::kv::{Error, compare_and_swap, delete, get, increment, list_keys, set};

    /// The value at `key` as text (lossy for bytes that are not UTF-8).
    pub fn get_string(key: &str) -> Result<Option<String>, Error> {
        Ok(get(key)?.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Stores `value` at `key`.
    pub fn set_string(key: &str, value: &str) -> Result<(), Error> {
        set(key, value.as_bytes())
    }
}

/// Outbound HTTP(S) through `wasi:http`, for a plugin the operator granted
/// `allow_http` in its `[plugins.<name>]` table (say `allow_http =
/// ["http://192.168.1.40"]`). A request to any other origin fails with an
/// error naming `HttpRequestDenied`; the call's `call_timeout_ms` bounds the
/// whole exchange.
pub mod http {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
    use wasip2::io::streams::StreamError;

    /// A response: its status and whole body.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Response {
        pub status: u16,
        pub body: Vec<u8>,
    }

    impl Response {
        /// The body as text (lossy for bytes that are not UTF-8).
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    /// `GET url` with `headers`.
    pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
        send(Method::Get, url, headers, None)
    }

    /// `POST url` with `headers` and `body`.
    pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response, String> {
        send(Method::Post, url, headers, Some(body))
    }

    fn send(
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response, String> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            return Err(format!("not an http:// or https:// URL: {url}"));
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let mut fields: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect();
        // A length rather than a chunked body: small device firmwares and
        // webhook receivers often read only `content-length`. Not a second
        // one when the caller set it: two lengths are a malformed request.
        let has_length = headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-length"));
        if let Some(body) = body
            && !has_length
        {
            fields.push(("content-length".into(), body.len().to_string().into_bytes()));
        }
        let fields = Fields::from_list(&fields).map_err(|err| format!("bad header: {err:?}"))?;
        let request = OutgoingRequest::new(fields);
        let invalid = |what: &str| format!("invalid {what} in {url}");
        request
            .set_method(&method)
            .map_err(|()| invalid("method"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("scheme"))?;
        request
            .set_authority(Some(authority))
            .map_err(|()| invalid("host"))?;
        request
            .set_path_with_query(Some(path))
            .map_err(|()| invalid("path"))?;
        let outgoing = request.body().map_err(|()| "request body taken")?;
        let pending = outgoing_handler::handle(request, None).map_err(|err| format!("{err:?}"))?;
        // A request that ended before its body went out (denied, refused)
        // closes the body: the response's error says why, so it is the one
        // reported.
        let sent = write_body(outgoing, body.unwrap_or_default());
        pending.subscribe().block();
        let response = pending
            .get()
            .ok_or("no response")?
            .map_err(|()| "response taken")?
            .map_err(|err| format!("{err:?}"))?;
        let status = response.status();
        let incoming = response.consume().map_err(|()| "response body taken")?;
        let stream = incoming
            .stream()
            .map_err(|()| "response body stream taken")?;
        let mut body = Vec::new();
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => body.extend(chunk),
                Err(StreamError::Closed) => break,
                Err(err) => return Err(format!("reading the body: {err:?}")),
            }
        }
        sent?;
        Ok(Response { status, body })
    }

    fn write_body(outgoing: OutgoingBody, body: &[u8]) -> Result<(), String> {
        {
            let stream = outgoing.write().map_err(|()| "request body stream taken")?;
            for chunk in body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|err| format!("sending the body: {err:?}"))?;
            }
        }
        OutgoingBody::finish(outgoing, None).map_err(|err| format!("{err:?}"))
    }
}

#[doc(hidden)]
pub fn __commands<P: Plugin>() -> Vec<bindings::CommandInfo> {
    P::COMMANDS
        .iter()
        .map(|command| bindings::CommandInfo {
            name: command.name.into(),
            summary: command.summary.into(),
        })
        .collect()
}

#[doc(hidden)]
pub fn __handle<P: Plugin>(request: Request) -> Result<String, String> {
    if !P::COMMANDS.iter().any(|c| c.name == request.command) {
        return Err(format!("unexpected command '{}'", request.command));
    }
    P::handle(request)
}

/// Serves the host's batch: its requests taken in one buffer (one crossing
/// for them all), each handled as [`__handle`] would and its reply given
/// back before the next is served (so a trap loses none).
#[doc(hidden)]
pub fn __serve_batch<P: Plugin>() {
    let buffer = wit::batch::take_requests();
    for request in Requests::new(&buffer) {
        let reply = __handle::<P>(request);
        wit::batch::reply(reply.as_deref().map_err(String::as_str));
    }
}

/// The requests of a `take-requests` buffer (its layout is in the WIT).
/// A buffer that does not hold to it is the host's bug: it traps.
struct Requests<'a> {
    buffer: &'a [u8],
    left: u32,
}

impl<'a> Requests<'a> {
    fn new(buffer: &'a [u8]) -> Self {
        let mut requests = Self { buffer, left: 0 };
        requests.left = requests.number();
        requests
    }

    fn number(&mut self) -> u32 {
        let (number, rest) = self
            .buffer
            .split_first_chunk::<4>()
            .expect("a batch buffer cut short");
        self.buffer = rest;
        u32::from_le_bytes(*number)
    }

    fn text(&mut self) -> String {
        let len = self.number() as usize;
        let (text, rest) = self.buffer.split_at(len);
        self.buffer = rest;
        String::from_utf8(text.to_vec()).expect("a batch buffer's text is UTF-8")
    }
}

impl Iterator for Requests<'_> {
    type Item = Request;

    fn next(&mut self) -> Option<Request> {
        self.left = self.left.checked_sub(1)?;
        let command = self.text();
        let raw_args = self.text();
        let args = (0..self.number()).map(|_| self.text()).collect();
        Some(Request {
            command,
            args,
            raw_args,
        })
    }
}

/// Exports a [`Plugin`] implementation as the component's `batched-plugin`
/// world (the `plugin` world's exports, and `serve-batch`).
/// Call it once, at the crate root of the plugin.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __PlugboardExport;

        impl $crate::bindings::Guest for __PlugboardExport {
            fn commands() -> ::std::vec::Vec<$crate::bindings::CommandInfo> {
                $crate::__commands::<$plugin>()
            }

            fn handle(
                request: $crate::Request,
            ) -> ::core::result::Result<::std::string::String, ::std::string::String> {
                $crate::__handle::<$plugin>(request)
            }

            fn serve_batch() {
                $crate::__serve_batch::<$plugin>()
            }
        }

        $crate::bindings::__export_world!(__PlugboardExport with_types_in $crate::bindings);
    };
}
