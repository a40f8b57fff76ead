//! Whole-message reads and buffered writes for the startup phases (client handshake, backend
//! login, cancel forwarding). The steady-state relay does not use this: it streams bytes.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::frame::{self, FrameError};
use crate::protocol::startup::{self, StartupError, StartupPacket};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed by peer")]
    Eof,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Startup(#[from] StartupError),
}

/// Largest message accepted in answer to the proxy's own queries.
const EXCHANGE_MESSAGE_LIMIT: usize = 16 << 20;

/// [`MessageIo::exchange`] over a split stream (the relay keeps backends split).
pub async fn exchange_split<R, W>(
    r: &mut R,
    w: &mut W,
    rbuf: &mut BytesMut,
    request: &[u8],
) -> Result<Vec<BytesMut>, WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    w.write_all(request).await?;
    w.flush().await?;
    let mut out = Vec::new();
    loop {
        match frame::split_message(rbuf, EXCHANGE_MESSAGE_LIMIT)? {
            Some(msg) => {
                let done = msg[0] == b'Z';
                out.push(msg);
                if done {
                    return Ok(out);
                }
            }
            None => {
                if r.read_buf(rbuf).await? == 0 {
                    return Err(WireError::Eof);
                }
            }
        }
    }
}

/// A stream with a read buffer (bytes received, not yet consumed) and a write buffer.
pub struct MessageIo<S> {
    pub io: S,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> MessageIo<S> {
    pub fn new(io: S) -> MessageIo<S> {
        MessageIo {
            io,
            rbuf: BytesMut::with_capacity(8192),
            wbuf: BytesMut::with_capacity(1024),
        }
    }

    async fn fill(&mut self) -> Result<(), WireError> {
        if self.io.read_buf(&mut self.rbuf).await? == 0 {
            return Err(WireError::Eof);
        }
        Ok(())
    }

    /// Reads one untagged startup-phase packet (length-checked before it is buffered).
    pub async fn read_startup(&mut self) -> Result<StartupPacket, WireError> {
        while self.rbuf.len() < 4 {
            self.fill().await?;
        }
        let body_len = startup::body_len([self.rbuf[0], self.rbuf[1], self.rbuf[2], self.rbuf[3]])?;
        while self.rbuf.len() < 4 + body_len {
            self.fill().await?;
        }
        let packet = self.rbuf.split_to(4 + body_len);
        Ok(startup::parse(&packet[4..])?)
    }

    /// Reads one whole tagged message, refusing any larger than `limit`.
    pub async fn read_message(&mut self, limit: usize) -> Result<BytesMut, WireError> {
        loop {
            if let Some(msg) = frame::split_message(&mut self.rbuf, limit)? {
                return Ok(msg);
            }
            self.fill().await?;
        }
    }

    /// Sends `request` and returns every message up to and including the next ReadyForQuery
    /// (for the proxy's own queries: probes, state replay).
    pub async fn exchange(&mut self, request: &[u8]) -> Result<Vec<BytesMut>, WireError> {
        self.io.write_all(request).await?;
        self.io.flush().await?;
        let mut out = Vec::new();
        loop {
            let msg = self.read_message(EXCHANGE_MESSAGE_LIMIT).await?;
            let done = msg[0] == b'Z';
            out.push(msg);
            if done {
                return Ok(out);
            }
        }
    }

    /// Writes out everything queued in `wbuf`.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.io.flush().await
    }
}
