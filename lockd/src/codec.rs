//! Reading frames off a client's socket, in the `pklock_proto::frame` format (so the
//! server and the PHP client share one definition of it), with bounded memory.
//!
//! What a header declares costs nothing: the buffer grows with the bytes that arrive.
//! Before authentication only frames up to [`SMALL_FRAME`] are accepted. A larger frame
//! first takes its size (beyond `SMALL_FRAME`) from the server-wide [`FrameBudget`], all
//! at once when its header arrives, so connections never hold part of the budget while
//! waiting for the rest (no deadlock); until it gets it, the connection reads nothing
//! more. So the memory of unfinished frames is at most `SMALL_FRAME` per connection plus
//! the budget.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use pklock_proto::frame::{self, FrameError, HEADER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Frames up to this size (header included) need no share of the budget; before
/// authentication nothing larger is accepted (`hello` is far smaller).
pub const SMALL_FRAME: usize = 4096;

/// What a connection's buffer starts with and grows by at least: most requests are well
/// under this, and idle connections should cost little memory.
const INITIAL_BUFFER: usize = 512;

/// The server-wide allowance of bytes for frames larger than [`SMALL_FRAME`] while they
/// arrive (`--frame-buffer-budget`).
#[derive(Debug, Clone)]
pub struct FrameBudget(Arc<Semaphore>);

impl FrameBudget {
    pub fn new(bytes: usize) -> Self {
        FrameBudget(Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
    }

    /// Bytes not taken by any frame now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Too large, cut short by the client closing, or a socket error.
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("frame not completed within {0:?}")]
    Timeout(Duration),
}

/// Splits a byte stream into frame payloads (the JSON, without the length prefix).
#[derive(Debug)]
pub struct FrameReader<R> {
    socket: R,
    /// Starts with the frame now arriving (and may hold the start of later ones).
    buf: BytesMut,
    max_frame: usize,
    frame_timeout: Duration,
    budget: FrameBudget,
    /// The frame now arriving's share of the budget.
    permit: Option<OwnedSemaphorePermit>,
    /// When the frame now arriving must be complete.
    deadline: Option<Instant>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(socket: R, max_frame: usize, frame_timeout: Duration, budget: FrameBudget) -> Self {
        FrameReader { socket, buf: BytesMut::new(), max_frame, frame_timeout, budget, permit: None, deadline: None }
    }

    /// Changes the largest frame accepted from now on (raised once the client authenticated).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Gives the frame now arriving a full `--frame-timeout` again, after the server
    /// stopped reading for a while (the client cannot send while nobody reads). Not a
    /// frame holding a share of the budget: see [`overdue`](Self::overdue).
    pub fn restart_clock(&mut self) {
        if self.deadline.is_some() && self.permit.is_none() {
            self.deadline = Some(Instant::now() + self.frame_timeout);
        }
    }

    /// Resolves when a frame holding a share of the budget is past its deadline, for use
    /// while the server is not reading because the client does not read its replies: a
    /// client must not keep part of the budget (which others' large frames wait for) by
    /// leaving a frame unfinished and its replies unread.
    pub async fn overdue(&self) {
        match (&self.permit, self.deadline) {
            (Some(_), Some(at)) => tokio::time::sleep_until(at).await,
            _ => std::future::pending().await,
        }
    }

    /// The next frame, reading as needed; `None` when the client closed between frames.
    /// Cancel-safe: nothing read is lost if the future is dropped.
    pub async fn next_frame(&mut self) -> Result<Option<Bytes>, ReadError> {
        loop {
            if let Some(frame) = self.buffered_frame()? {
                return Ok(Some(frame));
            }
            let frame_len = self.current_frame_len();
            if frame_len > SMALL_FRAME && self.permit.is_none() {
                // Waiting here is the server's doing, so the client's clock stops.
                self.deadline = None;
                let share = u32::try_from(frame_len - SMALL_FRAME).expect("a frame's length fits in its u32 header");
                let permit = self.budget.0.clone().acquire_many_owned(share).await.expect("the budget is never closed");
                self.permit = Some(permit);
                self.deadline = Some(Instant::now() + self.frame_timeout);
            }
            self.make_room(frame_len);
            let read = self.socket.read_buf(&mut self.buf);
            let n = match self.deadline {
                Some(at) => tokio::time::timeout_at(at, read).await.map_err(|_| ReadError::Timeout(self.frame_timeout))?,
                None => read.await,
            }
            .map_err(FrameError::Io)?;
            if n == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(FrameError::Truncated.into()) };
            }
            self.deadline.get_or_insert_with(|| Instant::now() + self.frame_timeout);
        }
    }

    /// The next frame if it has arrived whole already, without reading.
    pub fn buffered_frame(&mut self) -> Result<Option<Bytes>, ReadError> {
        let Some(end) = frame::decode(&self.buf, self.max_frame)? else {
            return Ok(None);
        };
        let mut whole = self.buf.split_to(end);
        whole.advance(HEADER_LEN);
        if self.permit.take().is_some() {
            // The rest still shares the large frame's allocation: copy it out, so the
            // memory goes back when the frame does.
            self.buf = BytesMut::from(&self.buf[..]);
        }
        self.deadline = (!self.buf.is_empty()).then(|| Instant::now() + self.frame_timeout);
        Ok(Some(whole.freeze()))
    }

    /// Bytes of the frame at the start of the buffer, header included, as far as known.
    fn current_frame_len(&self) -> usize {
        match self.buf.get(..HEADER_LEN) {
            Some(header) => HEADER_LEN + u32::from_be_bytes(header.try_into().expect("4 bytes")) as usize,
            None => HEADER_LEN,
        }
    }

    /// Makes room to read more of a `frame_len`-byte frame: the buffer doubles as bytes
    /// arrive, up to that frame's size (or `SMALL_FRAME`, so that pipelined small
    /// requests are read together), never to what the header merely declares.
    fn make_room(&mut self, frame_len: usize) {
        let len = self.buf.len();
        let wanted = (frame_len - len).min(INITIAL_BUFFER);
        if self.buf.capacity() - len >= wanted {
            return;
        }
        let capacity = (2 * len).max(len + INITIAL_BUFFER).min(frame_len.max(SMALL_FRAME));
        let mut grown = BytesMut::with_capacity(capacity);
        grown.extend_from_slice(&self.buf);
        self.buf = grown;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn reader(max_frame: usize, budget: &FrameBudget) -> (FrameReader<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        (FrameReader::new(server, max_frame, Duration::from_secs(5), budget.clone()), client)
    }

    fn header(len: usize) -> [u8; 4] {
        (len as u32).to_be_bytes()
    }

    #[tokio::test]
    async fn pipelined_frames_come_out_one_by_one() {
        let budget = FrameBudget::new(1 << 20);
        let (mut frames, mut client) = reader(1 << 20, &budget);
        client.write_all(&[&header(2)[..], b"{}", &header(3), b"[1]"].concat()).await.unwrap();
        assert_eq!(&frames.next_frame().await.unwrap().unwrap()[..], b"{}");
        assert_eq!(&frames.buffered_frame().unwrap().unwrap()[..], b"[1]");
        assert!(frames.buffered_frame().unwrap().is_none());
        drop(client);
        assert!(frames.next_frame().await.unwrap().is_none(), "a close between frames is not an error");
    }

    #[tokio::test]
    async fn the_buffer_grows_with_what_arrives_not_with_what_is_declared() {
        let budget = FrameBudget::new(1 << 20);
        let (mut frames, mut client) = reader(1 << 20, &budget);
        client.write_all(&header(1 << 20)).await.unwrap();
        client.write_all(&[b' '; 100]).await.unwrap();
        let pending = tokio::time::timeout(Duration::from_millis(50), frames.next_frame()).await;
        assert!(pending.is_err(), "frame incomplete");
        assert!(frames.buf.capacity() <= SMALL_FRAME, "capacity {}", frames.buf.capacity());
        assert_eq!(budget.available(), (1 << 20) - ((1 << 20) + HEADER_LEN - SMALL_FRAME), "the whole frame's share is taken");
        drop(client);
        assert!(matches!(frames.next_frame().await, Err(ReadError::Frame(FrameError::Truncated))));
    }

    #[tokio::test]
    async fn a_large_frame_waits_for_budget_and_gives_it_back() {
        let big = vec![b' '; 2 * SMALL_FRAME];
        let share = HEADER_LEN + big.len() - SMALL_FRAME;
        let budget = FrameBudget::new(share);
        let (mut first, mut first_client) = reader(1 << 20, &budget);
        let (mut second, mut second_client) = reader(1 << 20, &budget);
        first_client.write_all(&header(big.len())).await.unwrap();
        second_client.write_all(&header(big.len())).await.unwrap();
        second_client.write_all(&big).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(50), first.next_frame()).await.is_err());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), second.next_frame()).await.is_err(),
            "no budget left for the second frame"
        );
        first_client.write_all(&big).await.unwrap();
        assert_eq!(first.next_frame().await.unwrap().unwrap().len(), big.len());
        assert_eq!(second.next_frame().await.unwrap().unwrap().len(), big.len());
        assert_eq!(budget.available(), share);
        assert!(second.buf.capacity() <= SMALL_FRAME, "the large allocation is given back");
    }

    #[tokio::test]
    async fn a_frame_holding_budget_stays_on_the_clock_while_the_server_does_not_read() {
        let budget = FrameBudget::new(1 << 20);
        let (client, server) = tokio::io::duplex(64 * 1024);
        // Seconds, so that a busy CI machine cannot blur the difference: the frame is due
        // 2 s after it started, not 2 s after the clock was restarted.
        let mut frames = FrameReader::new(server, 1 << 20, Duration::from_secs(2), budget);
        let mut client = client;
        client.write_all(&header(2 * SMALL_FRAME)).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(20), frames.next_frame()).await.is_err());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        frames.restart_clock();
        let overdue = tokio::time::timeout(Duration::from_millis(1500), frames.overdue()).await;
        assert!(overdue.is_ok(), "the frame's deadline is kept");
    }

    #[tokio::test]
    async fn oversized_headers_are_refused_and_slow_frames_time_out() {
        let budget = FrameBudget::new(1 << 20);
        let (mut frames, mut client) = reader(SMALL_FRAME, &budget);
        client.write_all(&header(SMALL_FRAME + 1)).await.unwrap();
        assert!(matches!(frames.next_frame().await, Err(ReadError::Frame(FrameError::TooLarge { .. }))));

        let (client, server) = tokio::io::duplex(1024);
        let mut frames = FrameReader::new(server, SMALL_FRAME, Duration::from_millis(100), budget);
        let mut client = client;
        client.write_all(&header(10)).await.unwrap();
        assert!(matches!(frames.next_frame().await, Err(ReadError::Timeout(_))));
    }
}
