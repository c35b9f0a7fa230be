//! Framing: turns a TCP byte stream into `<EOF>`-terminated frames and back.
//!
//! TCP delivers bytes, not messages: one read may hold half a frame (even half
//! a delimiter, `on<E` then `OF>`) or several frames. The decoder keeps a
//! partial frame in the buffer and waits for more bytes; that is not an error.
//!
//! Two properties matter for a server facing untrusted clients:
//! - The search for the delimiter resumes where the previous one stopped, so a
//!   frame arriving one byte at a time costs O(n), not O(n²).
//! - A frame may not grow past `max_frame_bytes`: the decoder gives up as soon
//!   as the buffer proves the frame is too long, instead of buffering without
//!   bound while waiting for a delimiter that may never come.
//!
//! The same codec frames replies on the client side (`plugboard send`).

use std::time::Instant;

use bytes::{Buf, BufMut, BytesMut};
use memchr::memmem;
use tokio_util::codec::{Decoder, Encoder};

/// The 5 bytes that end every message and every reply.
pub const DELIMITER: &[u8] = b"<EOF>";

/// Finds [`DELIMITER`]. Messages and replies rarely hold a `<` of their
/// own, so the first `<` is nearly always the delimiter's: one `memchr`
/// finds it in a fraction of a general substring search's setup, which
/// dominated short frames. Past a `<` that is not, a substring search
/// (built once) takes the rest: never more than one of each per call.
pub fn find_delimiter(haystack: &[u8]) -> Option<usize> {
    static FINDER: std::sync::LazyLock<memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memmem::Finder::new(DELIMITER));
    let first = memchr::memchr(DELIMITER[0], haystack)?;
    if haystack[first..].starts_with(DELIMITER) {
        return Some(first);
    }
    let rest = first + 1;
    FINDER.find(&haystack[rest..]).map(|offset| rest + offset)
}

/// Why the byte stream could not be split into frames. Both cases end the
/// connection: there is no way to find the start of the next frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame too large")]
    TooLarge,
    #[error("incomplete message at end of stream (no delimiter)")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream on [`DELIMITER`]; see the module docs.
#[derive(Debug)]
pub struct EofCodec {
    max_frame_bytes: usize,
    /// Bytes at the front of the buffer already known to hold no delimiter.
    searched: usize,
    /// When the first bytes of the incomplete frame in the buffer arrived.
    partial_since: Option<Instant>,
}

impl EofCodec {
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            max_frame_bytes,
            searched: 0,
            partial_since: None,
        }
    }

    /// When the bytes of an incomplete frame started arriving, if the buffer
    /// holds one: a server's frame timeout counts from here. Only the decoder
    /// sees every read, so it keeps the time (once per read that ends in an
    /// incomplete frame, never per frame).
    pub fn partial_since(&self) -> Option<Instant> {
        self.partial_since
    }
}

impl Decoder for EofCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        // A frame of at most `max_frame_bytes` has its delimiter inside this window.
        let window_end = buf.len().min(self.max_frame_bytes + DELIMITER.len());
        if let Some(offset) = find_delimiter(&buf[self.searched..window_end]) {
            let frame = buf.split_to(self.searched + offset);
            buf.advance(DELIMITER.len());
            self.searched = 0;
            self.partial_since = None;
            return Ok(Some(frame));
        }
        if window_end == self.max_frame_bytes + DELIMITER.len() {
            return Err(FrameError::TooLarge);
        }
        // The delimiter may straddle this read and the next: re-check its tail.
        self.searched = window_end.saturating_sub(DELIMITER.len() - 1);
        if !buf.is_empty() && self.partial_since.is_none() {
            self.partial_since = Some(Instant::now());
        }
        Ok(None)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        // A trailing newline after the last `<EOF>` is not a message.
        let leftover_is_blank = buf.iter().all(u8::is_ascii_whitespace);
        buf.clear();
        self.searched = 0;
        self.partial_since = None;
        if leftover_is_blank {
            Ok(None)
        } else {
            Err(FrameError::Truncated)
        }
    }
}

/// A message is text: a reply is copied into the write buffer straight from
/// its `String`, with no conversion per reply.
impl Encoder<&str> for EofCodec {
    type Error = FrameError;

    fn encode(&mut self, item: &str, dst: &mut BytesMut) -> Result<(), FrameError> {
        let item = item.as_bytes();
        dst.reserve(item.len() + DELIMITER.len());
        dst.put_slice(item);
        dst.put_slice(DELIMITER);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `chunks` to a fresh decoder one at a time, like successive reads,
    /// then signals end of stream; returns the frames or the first error.
    fn decode_chunks(max: usize, chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut codec = EofCodec::new(max);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(frame) = codec.decode(&mut buf)? {
                frames.push(frame.to_vec());
            }
        }
        while let Some(frame) = codec.decode_eof(&mut buf)? {
            frames.push(frame.to_vec());
        }
        Ok(frames)
    }

    #[test]
    fn knows_when_an_incomplete_frame_started() {
        let mut codec = EofCodec::new(64);
        let mut buf = BytesMut::from(&b"on<EOF>of"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_some());
        assert_eq!(codec.partial_since(), None);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        let started = codec.partial_since().expect("an incomplete frame");
        buf.extend_from_slice(b"f");
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert_eq!(
            codec.partial_since(),
            Some(started),
            "counts from the first bytes"
        );
        buf.extend_from_slice(b"<EOF>");
        assert!(codec.decode(&mut buf).unwrap().is_some());
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert_eq!(codec.partial_since(), None, "nothing buffered");
    }

    #[test]
    fn splits_several_frames_in_one_read() {
        let frames = decode_chunks(64, &[b"on<EOF>off<EOF>status<EOF>"]).unwrap();
        assert_eq!(frames, [&b"on"[..], b"off", b"status"]);
    }

    #[test]
    fn waits_for_a_delimiter_split_across_reads() {
        let frames = decode_chunks(64, &[b"on<E", b"OF>"]).unwrap();
        assert_eq!(frames, [b"on"]);
    }

    #[test]
    fn keeps_a_partial_frame_until_it_completes() {
        let mut codec = EofCodec::new(64);
        let mut buf = BytesMut::from(&b"of"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"f<EOF>");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &b"off"[..]);
        assert!(buf.is_empty());
    }

    #[test]
    fn empty_frame_is_a_frame() {
        assert_eq!(decode_chunks(64, &[b"<EOF>"]).unwrap(), [b""]);
    }

    #[test]
    fn frame_of_exactly_the_maximum_is_accepted() {
        assert_eq!(decode_chunks(4, &[b"abcd<EOF>"]).unwrap(), [b"abcd"]);
    }

    #[test]
    fn frame_over_the_maximum_is_rejected_before_its_delimiter_arrives() {
        let err = decode_chunks(4, &[b"abcde<EOF"]).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge));
    }

    #[test]
    fn blank_leftover_at_end_of_stream_is_ignored() {
        assert_eq!(decode_chunks(64, &[b"on<EOF>\r\n"]).unwrap(), [b"on"]);
    }

    #[test]
    fn unterminated_leftover_at_end_of_stream_is_an_error() {
        let err = decode_chunks(64, &[b"on<EOF>off"]).unwrap_err();
        assert!(matches!(err, FrameError::Truncated));
    }

    /// These messages are sent to clients as error replies.
    #[test]
    fn error_messages_do_not_contain_the_delimiter() {
        for err in [FrameError::TooLarge, FrameError::Truncated] {
            assert!(find_delimiter(err.to_string().as_bytes()).is_none());
        }
    }

    #[test]
    fn encoder_appends_the_delimiter() {
        let mut dst = BytesMut::new();
        EofCodec::new(64).encode("success", &mut dst).unwrap();
        assert_eq!(&dst[..], b"success<EOF>");
    }

    /// Cuts `bytes` at the given offsets (taken modulo its length).
    fn split_at_offsets(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for cut in cuts.into_iter().chain([bytes.len()]) {
            chunks.push(bytes[start..cut].to_vec());
            start = cut;
        }
        chunks
    }

    fn strip_delimiters(mut message: String) -> String {
        while message.contains("<EOF>") {
            message = message.replace("<EOF>", "");
        }
        message
    }

    /// How a byte stream ends, as the decoder reports it.
    #[derive(Debug, PartialEq, Eq)]
    enum Outcome {
        Frames(Vec<Vec<u8>>),
        TooLarge,
        Truncated,
    }

    fn outcome(result: Result<Vec<Vec<u8>>, FrameError>) -> Outcome {
        match result {
            Ok(frames) => Outcome::Frames(frames),
            Err(FrameError::TooLarge) => Outcome::TooLarge,
            Err(FrameError::Truncated) => Outcome::Truncated,
            Err(FrameError::Io(err)) => panic!("no I/O here: {err}"),
        }
    }

    /// The decoder's contract, written the obvious way over the whole
    /// stream at once: frames up to the first one longer than `max` (or a
    /// tail that is already longer than a frame and its delimiter could
    /// be); a tail left at the end is an error unless it is blank.
    fn reference(wire: &[u8], max: usize) -> Outcome {
        let mut frames = Vec::new();
        let mut rest = wire;
        loop {
            match find_delimiter(rest) {
                Some(at) if at > max => return Outcome::TooLarge,
                Some(at) => {
                    frames.push(rest[..at].to_vec());
                    rest = &rest[at + DELIMITER.len()..];
                }
                None if rest.len() >= max + DELIMITER.len() => return Outcome::TooLarge,
                None if rest.iter().all(u8::is_ascii_whitespace) => {
                    return Outcome::Frames(frames);
                }
                None => return Outcome::Truncated,
            }
        }
    }

    /// Bytes made of pieces, so that delimiters, pieces of them, runs of
    /// text of every length and non-UTF-8 bytes all turn up often.
    fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
        let pieces: Vec<&'static [u8]> = vec![
            b"<EOF>",
            b"<EOF>",
            b"<E",
            b"OF>",
            b"<",
            b">",
            b"a",
            b"abc",
            b"abcdefgh",
            b" ",
            b"\n",
            b"\xff",
            b"\0",
        ];
        prop::collection::vec(prop::sample::select(pieces), 0..40)
            .prop_map(|pieces| pieces.concat())
    }

    #[test]
    fn a_lone_angle_bracket_before_the_delimiter_is_skipped() {
        assert_eq!(find_delimiter(b"a<b<EOF>"), Some(3));
        assert_eq!(find_delimiter(b"<<EOF>"), Some(1));
        assert_eq!(find_delimiter(b"<EO<EOF>"), Some(3));
        assert_eq!(find_delimiter(b"<EOF"), None);
        assert_eq!(find_delimiter(b""), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The fast path agrees with the plainest search there is, on text
        /// dense with the delimiter's own bytes.
        #[test]
        fn finds_the_first_delimiter_like_a_plain_search(
            haystack in proptest::collection::vec(proptest::sample::select(b"<EOF>a".to_vec()), 0..48)
        ) {
            let plain = haystack.windows(DELIMITER.len()).position(|window| window == DELIMITER);
            prop_assert_eq!(find_delimiter(&haystack), plain);
        }

        /// Any bytes, cut into reads anywhere: the decoder never panics and
        /// ends exactly as the whole-stream reference says.
        #[test]
        fn arbitrary_bytes_under_any_split_match_the_reference(
            wire in wire_bytes(),
            max in 1usize..24,
            cuts in prop::collection::vec(any::<usize>(), 0..24),
        ) {
            let chunks = split_at_offsets(&wire, &cuts);
            let chunk_refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(outcome(decode_chunks(max, &chunk_refs)), reference(&wire, max));
        }
    }

    proptest! {
        /// However the stream is cut into reads, the same frames come out.
        #[test]
        fn any_split_yields_the_same_frames(
            messages in prop::collection::vec("[a-z <>EOF]{0,12}", 1..8),
            cuts in prop::collection::vec(any::<usize>(), 0..16),
        ) {
            // Messages must not contain the delimiter themselves.
            let messages: Vec<String> = messages.into_iter().map(strip_delimiters).collect();
            let mut wire = Vec::new();
            for message in &messages {
                wire.extend_from_slice(message.as_bytes());
                wire.extend_from_slice(DELIMITER);
            }
            let chunks = split_at_offsets(&wire, &cuts);
            let chunk_refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let frames = decode_chunks(64, &chunk_refs).unwrap();
            let expected: Vec<Vec<u8>> = messages.iter().map(|m| m.as_bytes().to_vec()).collect();
            prop_assert_eq!(frames, expected);
        }

        /// An oversized frame is reported however it arrives, never buffered whole.
        #[test]
        fn oversized_frame_is_rejected_under_any_split(
            len in 9usize..64,
            cuts in prop::collection::vec(any::<usize>(), 0..16),
        ) {
            let mut wire = vec![b'x'; len];
            wire.extend_from_slice(DELIMITER);
            let chunks = split_at_offsets(&wire, &cuts);
            let chunk_refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            prop_assert!(matches!(decode_chunks(8, &chunk_refs), Err(FrameError::TooLarge)));
        }
    }
}
