//! What goes back to the client: a success text or an error message.
//!
//! On the wire an error is `error: <message><EOF>`, so a client can tell the
//! two apart by the prefix alone. A `Reply` holds its wire form (without the
//! delimiter, which the codec adds), so a plugin's text reaches the socket
//! without another copy.

use crate::protocol::codec::find_delimiter;

/// Every failure reply starts with this; `plugboard send` keys its exit status on it.
pub const ERROR_PREFIX: &str = "error: ";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply(String);

impl Reply {
    pub fn ok(text: String) -> Self {
        Self(text)
    }

    /// The host's own messages must not contain `<EOF>` (see [`Self::is_frameable`]).
    pub fn error(message: impl std::fmt::Display) -> Self {
        Self(format!("{ERROR_PREFIX}{message}"))
    }

    /// The refusal of a command outside a token's `commands`: the same
    /// words whether a client or a schedule under that token sent it.
    pub fn permission_denied(token: &str, command: &str) -> Self {
        Self::error(format_args!(
            "permission denied: token '{token}' may not run '{command}'"
        ))
    }

    pub fn is_error(&self) -> bool {
        self.0.starts_with(ERROR_PREFIX)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `text` can be framed as is. Text containing `<EOF>` would end
    /// the reply early and desynchronise the client's framing for every later
    /// reply on the connection, so plugin output is checked with this.
    pub fn is_frameable(text: &str) -> bool {
        find_delimiter(text.as_bytes()).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form() {
        assert_eq!(Reply::ok("success".into()).as_str(), "success");
        assert_eq!(Reply::error("boom").as_str(), "error: boom");
        assert!(Reply::error("boom").is_error());
        assert!(!Reply::ok("success".into()).is_error());
    }

    #[test]
    fn text_with_the_delimiter_is_not_frameable() {
        assert!(Reply::is_frameable("fine"));
        assert!(!Reply::is_frameable("a<EOF>b"));
    }
}
