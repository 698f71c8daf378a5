//! Target `frame`: an arbitrary byte stream split into frames by every decoder that reads
//! from a socket — `pklock_proto::frame::decode` in a loop, lockd's `FrameReader` fed in
//! arbitrary chunks, and the blocking `read_frame` the PHP extension uses — must never
//! panic and must agree with a plain reference split. (How `FrameReader` grows its buffer
//! is tested in lockd's codec unit tests and by the attack tests.)
//!
//! Input: two bytes of frame limit (big-endian), one byte `n`, then `n % 8` chunk
//! lengths (each byte + 1, used in turn, cyclically) and the stream itself.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use lockd::codec::{FrameBudget, FrameReader, ReadError};
use pklock_proto::frame::{self, FrameError, HEADER_LEN};
use tokio::io::{AsyncRead, ReadBuf};

/// How the stream ends after its whole frames.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Clean,
    /// A frame started but did not finish.
    Partial,
    /// A header declared this many bytes, above the limit.
    TooLarge(usize),
}

/// Payloads of the whole frames, in order, and how the stream ended.
type Split = (Vec<Vec<u8>>, End);

pub fn run(data: &[u8]) {
    let Some((&[max_hi, max_lo, n], rest)) = data.split_first_chunk::<3>() else { return };
    let max = usize::from(u16::from_be_bytes([max_hi, max_lo]));
    let (chunks, stream) = rest.split_at((usize::from(n) % 8).min(rest.len()));
    let want = reference(stream, max);
    assert_eq!(by_decode(stream, max), want, "frame::decode");
    assert_eq!(by_reader(stream, max, chunks), want, "FrameReader in chunks {chunks:?}");
    assert_eq!(by_read_frame(stream, max), want, "frame::read_frame");
}

/// The format as the protocol document states it, one step at a time.
fn reference(stream: &[u8], max: usize) -> Split {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        if rest.is_empty() {
            return (frames, End::Clean);
        }
        if rest.len() < 4 {
            return (frames, End::Partial);
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > max {
            return (frames, End::TooLarge(len));
        }
        if rest.len() < 4 + len {
            return (frames, End::Partial);
        }
        frames.push(rest[4..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
}

fn by_decode(stream: &[u8], max: usize) -> Split {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        match frame::decode(rest, max) {
            Ok(Some(end)) => {
                assert!(end >= HEADER_LEN && end <= rest.len(), "frame end {end} outside 4..={}", rest.len());
                frames.push(rest[HEADER_LEN..end].to_vec());
                rest = &rest[end..];
            }
            Ok(None) if rest.is_empty() => return (frames, End::Clean),
            Ok(None) => return (frames, End::Partial),
            Err(FrameError::TooLarge { len, .. }) => return (frames, End::TooLarge(len)),
            Err(e) => panic!("frame::decode: unexpected {e}"),
        }
    }
}

/// A socket that delivers the stream in the given chunk sizes, one per read.
struct Chunked<'a> {
    rest: &'a [u8],
    sizes: Box<dyn Iterator<Item = usize> + 'a>,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let size = self.sizes.next().expect("cycle is endless");
        let take = size.min(self.rest.len()).min(buf.remaining());
        buf.put_slice(&self.rest[..take]);
        self.rest = &self.rest[take..];
        Poll::Ready(Ok(()))
    }
}

/// Reads the stream the way a connection does: lockd's `FrameReader` over a socket that
/// hands it arbitrary chunks.
fn by_reader(stream: &[u8], max: usize, chunks: &[u8]) -> Split {
    let sizes = chunks.iter().map(|&c| usize::from(c) + 1).chain(chunks.is_empty().then_some(usize::MAX)).cycle();
    let socket = Chunked { rest: stream, sizes: Box::new(sizes) };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    runtime.block_on(async {
        let mut reader = FrameReader::new(socket, max, Duration::from_secs(3600), FrameBudget::new(1 << 20));
        let mut frames = Vec::new();
        loop {
            match reader.next_frame().await {
                Ok(Some(payload)) => frames.push(payload.to_vec()),
                Ok(None) => return (frames, End::Clean),
                Err(ReadError::Frame(FrameError::Truncated)) => return (frames, End::Partial),
                Err(ReadError::Frame(FrameError::TooLarge { len, .. })) => return (frames, End::TooLarge(len)),
                Err(e) => panic!("FrameReader: unexpected {e}"),
            }
        }
    })
}

fn by_read_frame(stream: &[u8], max: usize) -> Split {
    let mut frames = Vec::new();
    let mut reader = stream;
    let mut payload = Vec::new();
    loop {
        match frame::read_frame(&mut reader, max, &mut payload) {
            Ok(()) => frames.push(payload.clone()),
            Err(FrameError::Closed) => return (frames, End::Clean),
            Err(FrameError::Truncated) => return (frames, End::Partial),
            Err(FrameError::TooLarge { len, .. }) => return (frames, End::TooLarge(len)),
            Err(e) => panic!("read_frame: unexpected {e}"),
        }
    }
}
