//! Framing for tokio: decodes frames with `pklock_proto::frame::decode`, so the server
//! and the PHP client share one definition of the format.

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use pklock_proto::frame::{self, FrameError, HEADER_LEN};
use tokio_util::codec::Decoder;

/// Splits a byte stream into frame payloads (the JSON, without the length prefix).
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame: usize,
    /// When the frame now half-received started arriving.
    partial_since: Option<Instant>,
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder { max_frame, partial_since: None }
    }

    /// How long the frame now half-received has been arriving (zero when none is).
    pub fn partial_for(&self) -> Duration {
        self.partial_since.map_or(Duration::ZERO, |t| t.elapsed())
    }
}

impl Decoder for FrameDecoder {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match frame::decode(src, self.max_frame)? {
            Some(end) => {
                let mut whole = src.split_to(end);
                whole.advance(HEADER_LEN);
                self.partial_since = (!src.is_empty()).then(Instant::now);
                Ok(Some(whole.freeze()))
            }
            None => {
                if src.is_empty() {
                    self.partial_since = None;
                } else if self.partial_since.is_none() {
                    self.partial_since = Some(Instant::now());
                }
                // Reserve for the rest of a frame whose header has arrived, no more.
                if src.len() >= HEADER_LEN {
                    let len = u32::from_be_bytes(src[..HEADER_LEN].try_into().expect("4 bytes")) as usize;
                    src.reserve(HEADER_LEN + len - src.len());
                }
                Ok(None)
            }
        }
    }
}
