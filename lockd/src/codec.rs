//! Framing for tokio: decodes frames with `pklock_proto::frame::decode`, so the server
//! and the PHP client share one definition of the format.

use bytes::{Buf, Bytes, BytesMut};
use pklock_proto::frame::{self, FrameError, HEADER_LEN};
use tokio_util::codec::Decoder;

/// Splits a byte stream into frame payloads (the JSON, without the length prefix).
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame: usize,
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder { max_frame }
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
                Ok(Some(whole.freeze()))
            }
            None => {
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
