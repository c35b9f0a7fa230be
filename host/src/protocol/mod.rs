//! The wire format, with no I/O: a byte stream split into `<EOF>` frames
//! ([`codec`]), a frame read as a command ([`request`]), and what goes back
//! ([`reply`]). Everything here is pure and unit-tested without sockets.

pub mod codec;
pub mod reply;
pub mod request;
