//! Turns one frame into a [`Request`]: the only place that knows how a message
//! is spelled (UTF-8 text, a command name, whitespace-separated arguments).
//!
//! Parsing is pure and separate from I/O so that bad input is a value
//! ([`RequestError`]) the connection answers with an error reply, never a
//! reason to drop the client.

use std::fmt;

/// Authenticates a connection (`auth <token>`): answered by the server.
pub const AUTH: &str = "auth";
/// Lists the commands a client may run: answered by the server.
pub const HELP: &str = "help";
/// Lists the schedules a client may see: answered by the server.
pub const SCHEDULES: &str = "schedules";
/// Commands the server answers itself; no plugin can claim one.
pub const RESERVED: [&str; 3] = [AUTH, HELP, SCHEDULES];

/// The first word of a message: what the routing table is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandName(String);

impl CommandName {
    /// Accepts what a message could route to: non-empty, no whitespace.
    pub fn new(name: &str) -> Option<Self> {
        let valid = !name.is_empty() && !name.chars().any(char::is_whitespace);
        valid.then(|| Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for CommandName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: CommandName,
    /// The words after the command name.
    pub args: Vec<String>,
    /// Everything after the command name, trimmed, inner whitespace intact.
    pub raw_args: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("empty message")]
    Empty,
    #[error("message is not valid UTF-8")]
    InvalidUtf8,
}

impl Request {
    /// Whitespace is Unicode's (`char::is_whitespace`) either way; ASCII
    /// text, nearly every message, is split byte by byte, which costs a
    /// fraction of decoding it char by char.
    pub fn parse(frame: &[u8]) -> Result<Self, RequestError> {
        let text = std::str::from_utf8(frame).map_err(|_| RequestError::InvalidUtf8)?;
        let (name, rest) = match text.is_ascii() {
            true => split_ascii(text),
            false => split_unicode(text),
        }
        .ok_or(RequestError::Empty)?;
        // Not `CommandName::new`: `name` ends at the first whitespace, so
        // holds none, and checking again costs a scan per message.
        let command = CommandName(name.to_owned());
        let args = match rest.is_empty() {
            true => Vec::new(),
            false => rest.split_whitespace().map(str::to_owned).collect(),
        };
        Ok(Self {
            command,
            args,
            raw_args: rest.to_owned(),
        })
    }
}

/// The command name and the trimmed rest of a message; `None` if blank.
fn split_unicode(text: &str) -> Option<(&str, &str)> {
    let text = text.trim();
    let (name, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    (!name.is_empty()).then(|| (name, rest.trim_start()))
}

/// [`split_unicode`] for ASCII text, where `char::is_whitespace` is exactly
/// [`is_ascii_space`] (which, unlike `u8::is_ascii_whitespace`, counts the
/// vertical tab).
fn split_ascii(text: &str) -> Option<(&str, &str)> {
    let bytes = text.as_bytes();
    let start = bytes.iter().position(|&byte| !is_ascii_space(byte))?;
    let end = bytes.iter().rposition(|&byte| !is_ascii_space(byte))? + 1;
    let text = &text[start..end];
    let name_end = text.bytes().position(is_ascii_space).unwrap_or(text.len());
    let (name, rest) = text.split_at(name_end);
    let rest_start = rest.bytes().position(|byte| !is_ascii_space(byte));
    Some((name, &rest[rest_start.unwrap_or(rest.len())..]))
}

fn is_ascii_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t'..=b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_command() {
        let request = Request::parse(b"on").unwrap();
        assert_eq!(request.command.as_str(), "on");
        assert!(request.args.is_empty());
        assert_eq!(request.raw_args, "");
    }

    #[test]
    fn surrounding_whitespace_and_newlines_are_trimmed() {
        assert_eq!(
            Request::parse(b"\r\n  off \r\n").unwrap().command.as_str(),
            "off"
        );
    }

    #[test]
    fn arguments_are_split_and_kept_raw() {
        let request = Request::parse(b"echo  hello\tbig  world ").unwrap();
        assert_eq!(request.args, ["hello", "big", "world"]);
        assert_eq!(request.raw_args, "hello\tbig  world");
    }

    #[test]
    fn empty_and_blank_messages_are_errors() {
        assert_eq!(Request::parse(b""), Err(RequestError::Empty));
        assert_eq!(Request::parse(b" \r\n\t"), Err(RequestError::Empty));
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        assert_eq!(Request::parse(b"on\xff"), Err(RequestError::InvalidUtf8));
    }

    #[test]
    fn a_vertical_tab_separates_like_any_whitespace() {
        let request = Request::parse(b"\x0bset\x0ba\x0b b\x0b").unwrap();
        assert_eq!(request.command.as_str(), "set");
        assert_eq!(request.args, ["a", "b"]);
        assert_eq!(request.raw_args, "a\x0b b");
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Any bytes at all: parsing never panics, and what it returns keeps
        /// the promises the router and plugins rely on.
        #[test]
        fn any_frame_parses_or_says_why(frame in proptest::prop_oneof![
            proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            "[ \t\r\na-z\u{a0}\u{3000}é<>]{0,32}".prop_map(String::into_bytes),
            "\\PC{0,32}".prop_map(String::into_bytes),
        ]) {
            match (Request::parse(&frame), std::str::from_utf8(&frame)) {
                (Ok(request), Ok(text)) => {
                    let name = request.command.as_str();
                    proptest::prop_assert!(!name.is_empty());
                    proptest::prop_assert!(!name.contains(char::is_whitespace));
                    proptest::prop_assert_eq!(request.raw_args.trim(), request.raw_args.as_str());
                    let words: Vec<&str> = request.raw_args.split_whitespace().collect();
                    proptest::prop_assert_eq!(&request.args, &words);
                    proptest::prop_assert!(text.trim().starts_with(name));
                }
                (Err(RequestError::Empty), Ok(text)) => proptest::prop_assert!(text.trim().is_empty()),
                (Err(RequestError::InvalidUtf8), Err(_)) => {}
                (result, text) => proptest::prop_assert!(false, "{result:?} for {text:?}"),
            }
        }

        /// The ASCII fast path splits exactly as the general one.
        #[test]
        fn ascii_text_splits_as_unicode_text_does(text in "[ \t\n\x0b\x0c\r\x1c-\x1fa-c<>]{0,24}") {
            proptest::prop_assert_eq!(split_ascii(&text), split_unicode(&text));
        }
    }
}
