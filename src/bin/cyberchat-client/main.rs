//! `cyberchat-client`: Cyber Chat from a terminal, for learners without a browser and for
//! debugging the server.
//!
//! It serves two steps of the tutorial:
//! - **step 1**, the echo door (`ws://localhost:1337/echo`): typed lines go out as plain text
//!   and the answers are printed as they are (`Hello webSocket`, `I heard you say "hi"`);
//! - **steps 3 to 6**, the chat door (`ws://localhost:1337/?username=Alex`): typed lines become
//!   `message` frames, `/name`, `/join`, `/users`, `/channels` and `/quit` are commands, and
//!   frames are printed for people (`[general] Alex: hi`, `* Bob has joined the chat`).
//!
//! With `--raw`, stdout carries the frames exactly as received, one a line, so it can be piped
//! into `jq`; the client's own lines then go to stderr. It answers the server's keepalive pings
//! (step 7), as any client must to stay connected.
//!
//! ## Threads
//!
//! tungstenite's `WebSocket` reads and writes through one `&mut self`, so one thread cannot
//! block in `read` while another sends the user's line (and a read timeout used as a poll would
//! delay every line). As in the server (`src/connection/`), the socket is split by hand, with
//! **one reader and one writer**, on two handles of the same `TcpStream` (`try_clone`):
//!
//! - the **reader thread** owns the `WebSocket` that did the handshake (it holds whatever
//!   arrived right behind the `101`, often the `welcome`). Its stream swallows writes, so
//!   tungstenite's automatic pong and close reply go nowhere; the reader forwards every frame,
//!   pings and closes included, to the main thread.
//! - the **stdin thread** reads lines and forwards them.
//! - the **main thread** is the socket's only writer, with a client-role `WebSocketContext`
//!   that masks its frames. It waits on the one mpsc queue both threads feed, so a typed line is
//!   sent and a ping answered the moment they arrive: no lock, no polling. It also keeps the
//!   little state there is (who is in the channel, in `session.rs`) and does all the printing,
//!   in order.

mod connection;
mod operators;
mod session;

use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;

use connection::{DEFAULT_URL, Target, connect, read_frames, read_lines};
use session::{Room, Session};

const USAGE: &str = "\
usage: cyberchat-client [--raw] [--verbose] [--code CODE] [--operator TOKEN] [URL]

Chat with a Cyber Chat server from the terminal. URL defaults to ws://localhost:1337/
  ws://HOST:PORT/?username=Alex&channel=general   the chat (also /chat)
  ws://HOST:PORT/echo                             the echo door (tutorial step 1)

  --raw       print the frames exactly as received, one a line (other output goes to stderr)
  --verbose   also show typing, state and the server's keepalive pings
  --code CODE       the room code, given when the server says the chat is locked
                    (also $CYBERCHAT_ROOM_CODE, which keeps it out of `ps`)
  --operator TOKEN  the operator token, given with the code or after the welcome
                    (also $CYBERCHAT_OPERATOR_TOKEN)
  --help      this text

Typed lines are sent as chat messages (plain text on /echo). Commands:
  /name NEW   rename           /join CHANNEL   change channel
  /users      who is here      /channels       list the channels
  /send JSON  send a raw frame /quit           leave (so does end of input, Ctrl-D)
  /code CODE  the room code    /op TOKEN       become an operator
Operators: /kick NAME [REASON], /mute NAME MINUTES (0 lifts it), /ban NAME MINUTES.
Removed (4001) or refused (4003), the client says why and does not reconnect.
A line starting with // sends a message that starts with /.";

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("cyberchat-client: {message}");
            return ExitCode::from(2);
        }
    };
    let target = match Target::parse(&options.url) {
        Ok(target) => target,
        Err(message) => {
            eprintln!("cyberchat-client: {message}");
            return ExitCode::from(2);
        }
    };
    let (ws, writer) = match connect(target.request, &target.host, target.port) {
        Ok(connected) => connected,
        Err(message) => {
            eprintln!("cyberchat-client: {message}");
            return ExitCode::FAILURE;
        }
    };

    let (events, inbox) = mpsc::channel();
    let from_socket = events.clone();
    thread::spawn(move || read_frames(ws, from_socket));
    thread::spawn(move || read_lines(events));
    let session = Session {
        door: target.door,
        raw: options.raw,
        verbose: options.verbose,
        writer,
        room: Room::default(),
        quitting: None,
        code: options.code,
        operator: options.operator,
        operator_given: false,
    };
    // Returning ends the process, and with it the stdin thread still blocked on a line.
    ExitCode::from(session.run(inbox))
}

// ---------------------------------------------------------------------------------------------
// The command line

struct Options {
    url: String,
    raw: bool,
    verbose: bool,
    code: Option<String>,
    operator: Option<String>,
}

/// `Ok(None)` means `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        url: String::new(),
        raw: false,
        verbose: false,
        code: std::env::var("CYBERCHAT_ROOM_CODE").ok(),
        operator: std::env::var("CYBERCHAT_OPERATOR_TOKEN").ok(),
    };
    let mut url = None;
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match arg.as_str() {
            "--help" | "-h" => return Ok(None),
            "--raw" => options.raw = true,
            "--verbose" | "-v" => options.verbose = true,
            "--code" => options.code = Some(value("--code")?),
            "--operator" => options.operator = Some(value("--operator")?),
            flag if flag.starts_with('-') => {
                return Err(format!("unknown option {flag} (try --help)"));
            }
            _ if url.is_some() => return Err(format!("more than one URL given: {arg}")),
            _ => url = Some(arg),
        }
    }
    options.url = url.unwrap_or_else(|| DEFAULT_URL.to_owned());
    Ok(Some(options))
}
