//! The echo door, `/echo` (tutorial step 1): the smallest WebSocket server worth the name.
//!
//! It greets with `Hello webSocket`, answers each text message `msg` with
//! `I heard you say "msg"`, and sends binary messages back unchanged. It is not a chat user:
//! the hub only knows it so that shutdown can close it with 1001.

use crate::connection::frame::{binary_frame, text_frame};
use crate::connection::{Ended, Incoming, Reader};

/// The first message on the echo door.
pub const GREETING: &str = "Hello webSocket";

/// The echo door's answer to a text message.
pub fn reply_to(text: &str) -> String {
    format!("I heard you say \"{text}\"")
}

/// Serves one echo connection until it ends; returns why.
pub fn serve(reader: &mut Reader) -> Ended {
    if let Err(ended) = reader.send(text_frame(GREETING.as_bytes())) {
        return ended;
    }
    loop {
        let answer = match reader.next_message() {
            Ok(Incoming::Text(text)) => text_frame(reply_to(&text).as_bytes()),
            Ok(Incoming::Binary(data)) => binary_frame(&data),
            Err(ended) => return ended,
        };
        if let Err(ended) = reader.send(answer) {
            return ended;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn step1_the_echo_reply_quotes_the_message() {
        assert_eq!(super::reply_to("hi"), "I heard you say \"hi\"");
    }
}
