//! Length-delimited framing of the client protocol on QUIC streams, shared by the node and
//! the SDK: `[u32 big-endian length][protobuf message]`, repeated.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame is larger than the limit.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The announced or actual size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes do not decode as the expected message.
    #[error("undecodable frame: {0}")]
    Malformed(String),
    /// A frame without a known kind (an unknown or missing `kind`).
    #[error("frame with no known kind (unknown frame type, or none set)")]
    UnknownKind,
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({have} of {want} bytes)")]
    Truncated {
        /// Bytes received.
        have: usize,
        /// Bytes announced.
        want: usize,
    },
}

/// Appends `frame` with its length prefix (the QUIC stream framing).
pub fn put_length_delimited(frame: &impl Message, out: &mut BytesMut) {
    let len = frame.encoded_len();
    out.reserve(LENGTH_PREFIX_BYTES + len);
    out.put_u32(len as u32);
    frame
        .encode(out)
        .expect("BytesMut grows as needed, encoding cannot fail");
}

/// Splits a byte stream into length-delimited frames. Feed it what arrives; take frames out.
#[derive(Debug)]
pub struct FrameReader {
    buffer: BytesMut,
    limit: usize,
}

impl FrameReader {
    /// A reader refusing frames over `limit` bytes.
    pub fn new(limit: usize) -> Self {
        FrameReader {
            buffer: BytesMut::new(),
            limit,
        }
    }

    /// Adds received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame's bytes, if one has arrived. Fails as soon as a length prefix
    /// exceeds the limit, before its body arrives.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buffer.len() < LENGTH_PREFIX_BYTES {
            return Ok(None);
        }
        let len =
            u32::from_be_bytes(self.buffer[..LENGTH_PREFIX_BYTES].try_into().expect("4 bytes")) as usize;
        if len > self.limit {
            return Err(FrameError::TooLarge {
                size: len,
                limit: self.limit,
            });
        }
        if self.buffer.len() < LENGTH_PREFIX_BYTES + len {
            return Ok(None);
        }
        self.buffer.advance(LENGTH_PREFIX_BYTES);
        Ok(Some(self.buffer.split_to(len).freeze()))
    }

    /// Call at the end of the stream: fails when a partial frame is left.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let want = if self.buffer.len() >= LENGTH_PREFIX_BYTES {
            u32::from_be_bytes(self.buffer[..LENGTH_PREFIX_BYTES].try_into().expect("4 bytes")) as usize
        } else {
            LENGTH_PREFIX_BYTES
        };
        Err(FrameError::Truncated {
            have: self.buffer.len(),
            want,
        })
    }
}
