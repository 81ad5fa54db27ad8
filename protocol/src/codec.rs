//! Length-delimited framing: a protobuf varint32 length, then one message.
//!
//! This is protobuf's standard delimited form (Java's `writeDelimitedTo`, Go's
//! `protodelim`). The decoder yields raw frames and leaves decoding of the
//! message to the caller, so that a frame that is well delimited but holds a
//! bad message can be answered with an error while the stream stays usable.
//! A length above the maximum is rejected before anything is allocated.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The most bytes a varint32 length prefix may take.
const MAX_VARINT32_LEN: usize = 5;

/// Why a stream of frames cannot be read further.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The length prefix announces more than the maximum frame size.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// The configured maximum.
        max: usize,
    },
    /// The length prefix is not a valid varint32.
    #[error("malformed frame length prefix")]
    BadLength,
    /// A message to send does not fit in the maximum frame size.
    #[error("outgoing message of {len} bytes exceeds the maximum of {max} bytes")]
    OutgoingTooLarge {
        /// The encoded length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The underlying transport failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Frames protobuf messages with a varint32 length prefix.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame: usize,
}

impl FrameCodec {
    /// A codec that refuses frames longer than `max_frame` bytes in both directions.
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(crate::DEFAULT_MAX_FRAME_BYTES)
    }
}

/// Reads a varint32 from the start of `buf` without consuming it.
/// `Ok(None)` means more bytes are needed; the value and its width otherwise.
fn peek_varint32(buf: &[u8]) -> Result<Option<(u64, usize)>, CodecError> {
    let mut value: u64 = 0;
    for (i, byte) in buf.iter().take(MAX_VARINT32_LEN).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_VARINT32_LEN {
        Err(CodecError::BadLength)
    } else {
        Ok(None)
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        let Some((len, header)) = peek_varint32(src)? else {
            return Ok(None);
        };
        if len > self.max_frame as u64 {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        let len = len as usize;
        if src.len() < header + len {
            // The length is within bounds, so reserving for the rest is safe.
            src.reserve(header + len - src.len());
            return Ok(None);
        }
        src.advance(header);
        Ok(Some(src.split_to(len).freeze()))
    }
}

impl<M: prost::Message> Encoder<M> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: M, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(&msg, self.max_frame, dst)
    }
}

/// Appends `msg` to `dst` as one delimited frame.
pub fn encode_frame<M: prost::Message>(
    msg: &M,
    max_frame: usize,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let len = msg.encoded_len();
    if len > max_frame {
        return Err(CodecError::OutgoingTooLarge { len, max: max_frame });
    }
    dst.reserve(prost::length_delimiter_len(len) + len);
    prost::encoding::encode_varint(len as u64, dst);
    // Cannot fail: the buffer was reserved above.
    msg.encode(dst).expect("buffer reserved for the encoded message");
    Ok(())
}

/// Writes raw bytes as one delimited frame, for tests that need odd payloads.
pub fn encode_raw_frame(payload: &[u8], dst: &mut BytesMut) {
    prost::encoding::encode_varint(payload.len() as u64, dst);
    dst.put_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{ClientFrame, Ping, client_frame::Body};
    use prost::Message;

    fn ping(id: u64) -> ClientFrame {
        ClientFrame {
            request_id: id,
            body: Some(Body::Ping(Ping { nonce: id * 10 })),
        }
    }

    fn encoded(frames: &[ClientFrame]) -> BytesMut {
        let mut buf = BytesMut::new();
        for f in frames {
            encode_frame(f, 1024, &mut buf).unwrap();
        }
        buf
    }

    #[test]
    fn frame_split_across_reads_is_decoded_once_complete() {
        let whole = encoded(&[ping(7)]);
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            buf.put_u8(*byte);
            let out = codec.decode(&mut buf).unwrap();
            if i + 1 < whole.len() {
                assert!(out.is_none(), "decoded early at byte {i}");
            } else {
                let frame = out.expect("complete frame");
                assert_eq!(ClientFrame::decode(frame).unwrap(), ping(7));
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn several_frames_in_one_read_are_all_decoded_in_order() {
        let mut buf = encoded(&[ping(1), ping(2), ping(3)]);
        let mut codec = FrameCodec::new(1024);
        for id in 1..=3 {
            let frame = codec.decode(&mut buf).unwrap().unwrap();
            assert_eq!(ClientFrame::decode(frame).unwrap().request_id, id);
        }
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn oversized_frame_is_rejected_before_allocation() {
        let mut buf = BytesMut::new();
        // Announce 1 GiB but send only the prefix.
        prost::encoding::encode_varint(1 << 30, &mut buf);
        let cap_before = buf.capacity();
        let err = FrameCodec::new(1024).decode(&mut buf).unwrap_err();
        assert!(matches!(err, CodecError::FrameTooLarge { len, .. } if len == 1 << 30));
        assert_eq!(buf.capacity(), cap_before, "nothing reserved for the frame");
    }

    #[test]
    fn garbage_length_prefix_is_an_error() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..]);
        let err = FrameCodec::new(usize::MAX).decode(&mut buf).unwrap_err();
        assert!(matches!(err, CodecError::BadLength));
    }

    #[test]
    fn garbage_inside_a_well_framed_message_leaves_the_stream_usable() {
        let mut buf = BytesMut::new();
        encode_raw_frame(&[0xff, 0x00, 0x13, 0x37], &mut buf);
        buf.extend_from_slice(&encoded(&[ping(9)]));
        let mut codec = FrameCodec::new(1024);
        let bad = codec.decode(&mut buf).unwrap().unwrap();
        assert!(ClientFrame::decode(bad).is_err());
        let good = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(ClientFrame::decode(good).unwrap(), ping(9));
    }

    #[test]
    fn empty_frame_decodes_to_a_default_message() {
        let mut buf = BytesMut::from(&[0u8][..]);
        let frame = FrameCodec::new(16).decode(&mut buf).unwrap().unwrap();
        assert_eq!(ClientFrame::decode(frame).unwrap(), ClientFrame::default());
    }

    #[test]
    fn outgoing_message_over_the_maximum_is_refused() {
        let big = ClientFrame {
            request_id: 1,
            body: Some(Body::SendPrivate(crate::v1::SendPrivate {
                to: "bob".into(),
                client_msg_id: "1".into(),
                text: "x".repeat(100),
                ..Default::default()
            })),
        };
        let mut buf = BytesMut::new();
        let err = encode_frame(&big, 50, &mut buf).unwrap_err();
        assert!(matches!(err, CodecError::OutgoingTooLarge { .. }));
        assert!(buf.is_empty());
    }

    #[test]
    fn frames_match_protobufs_own_delimited_encoding() {
        let msg = ping(42);
        let ours = encoded(std::slice::from_ref(&msg));
        assert_eq!(&ours[..], &msg.encode_length_delimited_to_vec()[..]);
    }
}
