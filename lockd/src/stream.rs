//! A client's byte stream as a connection task sees it: the TCP socket itself, or the local
//! end of a TLS bridge (see [`crate::tls`]). Both can be written with `try_write` from any
//! task, which the [`Outbox`](crate::outbox::Outbox) relies on; an enum keeps plain TCP on
//! the same code path as before, at the cost of one match per call.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

#[derive(Debug)]
pub enum ClientStream {
    Tcp(TcpStream),
    /// The connection task's end of a socket pair whose other end a pump moves to and from
    /// the client's TLS stream.
    Bridged(UnixStream),
}

impl From<TcpStream> for ClientStream {
    fn from(stream: TcpStream) -> Self {
        ClientStream::Tcp(stream)
    }
}

impl From<UnixStream> for ClientStream {
    fn from(stream: UnixStream) -> Self {
        ClientStream::Bridged(stream)
    }
}

impl ClientStream {
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            ClientStream::Tcp(stream) => {
                let (read, write) = stream.into_split();
                (ReadHalf::Tcp(read), WriteHalf::Tcp(write))
            }
            ClientStream::Bridged(stream) => {
                let (read, write) = stream.into_split();
                (ReadHalf::Bridged(read), WriteHalf::Bridged(write))
            }
        }
    }
}

#[derive(Debug)]
pub enum ReadHalf {
    Tcp(tcp::OwnedReadHalf),
    Bridged(unix::OwnedReadHalf),
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(read) => Pin::new(read).poll_read(cx, buf),
            ReadHalf::Bridged(read) => Pin::new(read).poll_read(cx, buf),
        }
    }
}

#[derive(Debug)]
pub enum WriteHalf {
    Tcp(tcp::OwnedWriteHalf),
    Bridged(unix::OwnedWriteHalf),
}

impl WriteHalf {
    pub fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            WriteHalf::Tcp(write) => write.try_write(bytes),
            WriteHalf::Bridged(write) => write.try_write(bytes),
        }
    }

    pub async fn writable(&self) -> io::Result<()> {
        match self {
            WriteHalf::Tcp(write) => write.writable().await,
            WriteHalf::Bridged(write) => write.writable().await,
        }
    }
}
