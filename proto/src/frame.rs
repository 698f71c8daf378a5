//! Framing: `u32` big-endian payload length, then the payload (one JSON object).
//!
//! The decoder is a pure function over a byte buffer, so the async server (through a
//! tokio codec) and the blocking PHP client (through [`read_frame`]) share it.

use std::io::{self, Read, Write};

use serde::Serialize;

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// Default largest payload accepted (1 MiB).
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("connection closed by peer")]
    Closed,
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("could not encode message: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Looks for one complete frame at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, or `Ok(Some(n))` when the first frame's
/// payload is `buf[HEADER_LEN..n]` and the whole frame is `buf[..n]`. A declared length
/// above `max` is an error as soon as the header has arrived, before any payload is
/// buffered, so an oversized frame never costs memory.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(header.try_into().expect("4-byte slice")) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let end = HEADER_LEN + len;
    Ok((buf.len() >= end).then_some(end))
}

/// Appends one frame holding `msg` as JSON to `buf`.
pub fn encode_into<T: Serialize + ?Sized>(buf: &mut Vec<u8>, msg: &T) -> Result<(), FrameError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_LEN]);
    serde_json::to_writer(&mut *buf, msg)?;
    let len = u32::try_from(buf.len() - start - HEADER_LEN).map_err(|_| FrameError::TooLarge {
        len: buf.len() - start - HEADER_LEN,
        max: u32::MAX as usize,
    })?;
    buf[start..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Encodes `msg` as one frame.
pub fn encode<T: Serialize + ?Sized>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = Vec::with_capacity(64);
    encode_into(&mut buf, msg)?;
    Ok(buf)
}

/// Writes `msg` as one frame to a blocking writer.
pub fn write_frame<W: Write, T: Serialize + ?Sized>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    w.write_all(&encode(msg)?)?;
    Ok(())
}

/// Reads one frame from a blocking reader into `payload` (replacing its contents).
///
/// End of stream before the first byte is [`FrameError::Closed`]; inside a frame it is
/// [`FrameError::Truncated`].
pub fn read_frame<R: Read>(r: &mut R, max: usize, payload: &mut Vec<u8>) -> Result<(), FrameError> {
    let mut header = [0u8; HEADER_LEN];
    read_exact_or(r, &mut header, FrameError::Closed)?;
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    payload.clear();
    payload.resize(len, 0);
    read_exact_or(r, payload, FrameError::Truncated)
}

fn read_exact_or<R: Read>(r: &mut R, buf: &mut [u8], at_eof: FrameError) -> Result<(), FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Err(at_eof),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_round_trips() {
        let frame = encode(&serde_json::json!({"command": "ping"})).unwrap();
        assert_eq!(&frame[..4], &(frame.len() as u32 - 4).to_be_bytes());
        assert_eq!(decode(&frame, 1024).unwrap(), Some(frame.len()));
        assert_eq!(&frame[4..], br#"{"command":"ping"}"#);
    }

    #[test]
    fn decode_waits_for_whole_header_and_payload() {
        let frame = encode(&serde_json::json!({"a": 1})).unwrap();
        for cut in 0..frame.len() {
            assert_eq!(decode(&frame[..cut], 1024).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn decode_refuses_oversized_length_before_payload_arrives() {
        let header = 2_000_000u32.to_be_bytes();
        assert!(matches!(
            decode(&header, DEFAULT_MAX_FRAME),
            Err(FrameError::TooLarge { len: 2_000_000, max: DEFAULT_MAX_FRAME })
        ));
    }

    #[test]
    fn read_frame_tells_clean_close_from_truncation() {
        let mut payload = Vec::new();
        let empty: &[u8] = &[];
        assert!(matches!(read_frame(&mut &*empty, 16, &mut payload), Err(FrameError::Closed)));
        let half: &[u8] = &[0, 0, 0, 5, b'{'];
        assert!(matches!(read_frame(&mut &*half, 16, &mut payload), Err(FrameError::Truncated)));
        let whole: &[u8] = &[0, 0, 0, 2, b'{', b'}'];
        read_frame(&mut &*whole, 16, &mut payload).unwrap();
        assert_eq!(payload, b"{}");
    }
}
