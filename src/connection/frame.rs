//! WebSocket frames as bytes (RFC 6455, section 5): the server's side of the framing that
//! tungstenite decodes for the reader. Server frames are never masked, so one encoding can be
//! written to every recipient.
//!
//! A frame is a two-byte header — FIN and the opcode (`0x1` text, `0x2` binary, `0x8` close,
//! `0x9` ping, `0xA` pong), then the mask bit and a 7-bit length — followed by 0, 2 or 8 more
//! length bytes (for payloads of 126 bytes and more, and of 65536 and more), a 4-byte mask
//! from clients only, and the payload. `hi` from the server is `81 02 68 69`.

use tungstenite::Bytes;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

/// A ping with no payload, the same two bytes every time.
pub const PING: &[u8] = &[0x89, 0x00];

/// Wraps UTF-8 text (a chat frame's JSON, or the echo door's plain text) in an unmasked,
/// final WebSocket text frame.
pub fn text_frame(payload: &[u8]) -> Bytes {
    encode_frame(OpCode::Data(Data::Text), payload)
}

/// A text frame whose payload is `before`, `middle` and `after` end to end, as three slices:
/// the header and `before` in one, `middle` as it is (shared, not copied), `after`.
pub fn text_frame_around(before: &[u8], middle: Bytes, after: &[u8]) -> Vec<Bytes> {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    let len = before.len() + middle.len() + after.len();
    let mut head = Vec::with_capacity(before.len() + 10);
    header
        .format(len as u64, &mut head)
        .expect("writing to a Vec cannot fail");
    head.extend_from_slice(before);
    vec![Bytes::from(head), middle, Bytes::copy_from_slice(after)]
}

/// Wraps bytes in a binary frame (the echo door sends binary messages back unchanged).
pub fn binary_frame(payload: &[u8]) -> Bytes {
    encode_frame(OpCode::Data(Data::Binary), payload)
}

/// The pong that answers a ping with this payload.
pub fn pong_frame(payload: &[u8]) -> Bytes {
    encode_frame(OpCode::Control(Control::Pong), payload)
}

/// Wraps bytes in an unmasked, final WebSocket frame of the given kind.
pub fn encode_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let mut out = Vec::with_capacity(payload.len() + 10);
    header
        .format(payload.len() as u64, &mut out)
        .expect("writing to a Vec cannot fail");
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// An encoded close frame with an optional code and reason.
pub fn close_frame(close: Option<CloseFrame>) -> Bytes {
    let mut out = Vec::with_capacity(16);
    Frame::close(close)
        .format(&mut out)
        .expect("writing to a Vec cannot fail");
    Bytes::from(out)
}

/// The code of an encoded close frame (`None` for a close frame without one).
pub fn close_code(frame: &[u8]) -> Option<u16> {
    let payload = frame.get(2..4)?;
    Some(u16::from_be_bytes([payload[0], payload[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step1_frames_are_unmasked_with_three_length_encodings() {
        let short = text_frame(b"hi");
        assert_eq!(&short[..], &[0x81, 2, b'h', b'i']);
        let medium = text_frame(&[b'a'; 300]);
        assert_eq!(&medium[..4], &[0x81, 126, 1, 44]);
        assert_eq!(medium.len(), 304);
        let long = binary_frame(&[0; 70_000]);
        assert_eq!(&long[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert_eq!(close_code(&close_frame(None)), None);
        let away = close_frame(Some(CloseFrame {
            code: 1001.into(),
            reason: "bye".into(),
        }));
        assert_eq!(&away[..], &[0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
        assert_eq!(close_code(&away), Some(1001));
    }
}
