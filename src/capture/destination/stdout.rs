//! `--output stdout`: one JSON line per change, flushed at each commit.
//!
//! A transaction is durable once its lines are flushed to the writer; the
//! LSN is acknowledged only then. Lines of an unacknowledged transaction can
//! appear again after a restart (at-least-once).

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

use super::{Destination, OutputError};
use crate::capture::change::ChangeEvent;
use crate::postgres::Lsn;

pub struct JsonLines<W: AsyncWrite + Unpin> {
    out: BufWriter<W>,
    line: Vec<u8>,
    durable: Lsn,
}

impl<W: AsyncWrite + Unpin> JsonLines<W> {
    pub fn new(writer: W) -> Self {
        JsonLines {
            out: BufWriter::with_capacity(64 * 1024, writer),
            line: Vec::with_capacity(1024),
            durable: Lsn::ZERO,
        }
    }

    fn io(source: std::io::Error) -> OutputError {
        OutputError::Io {
            target: "stdout",
            source,
        }
    }
}

impl<W: AsyncWrite + Unpin> Destination for JsonLines<W> {
    async fn send(&mut self, event: &ChangeEvent<'_>) -> Result<(), OutputError> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, event)
            .map_err(|source| OutputError::Encode { lsn: event.lsn, source })?;
        self.line.push(b'\n');
        self.out.write_all(&self.line).await.map_err(Self::io)?;
        Ok(())
    }

    async fn end_transaction(&mut self, ack_lsn: Lsn) -> Result<(), OutputError> {
        self.out.flush().await.map_err(Self::io)?;
        self.durable = self.durable.max(ack_lsn);
        Ok(())
    }

    fn durable(&self) -> Result<Lsn, OutputError> {
        Ok(self.durable)
    }

    async fn flush(&mut self) -> Result<(), OutputError> {
        self.out.flush().await.map_err(Self::io)
    }
}
