//! Every connection starts here (tutorial steps 0 and 1): its thread reads the HTTP head and
//! takes it through one of the port's doors — a WebSocket upgrade to the chat ([`chat`]) or to
//! the echo step ([`echo`]), or a plain `GET` for a file or `/stats` ([`plain`]).

pub mod chat;
pub mod echo;
pub mod plain;
pub mod rate;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Instant;

use tungstenite::Bytes;

use log::{debug, info, warn};

use crate::capacity::{AtCapacity, Budget, Handshake, OutboundBudget};
use crate::config::Config;
use crate::connection::{ConnId, Ended, Outbox, Reader};
use crate::http::{self, HANDSHAKE_TIMEOUT, RequestHead};
use crate::hub::Event;
use crate::throttle::Throttle;

/// What every connection's thread needs from the server.
pub struct Context {
    pub config: Config,
    pub hub: SyncSender<Event>,
    pub budget: Arc<Budget>,
    pub outbound: Arc<OutboundBudget>,
    pub stopping: AtomicBool,
}

/// Refusals for lack of places, logged at most every few seconds.
static REFUSED: Throttle = Throttle::new();

/// The two WebSocket doors of the one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Chat,
    Echo,
}

impl Door {
    /// The door a path leads to, if any.
    pub fn for_path(path: &str) -> Option<Door> {
        match path {
            "/" | "/chat" => Some(Door::Chat),
            "/echo" => Some(Door::Echo),
            _ => None,
        }
    }

    /// Each door's own subprotocol.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Door::Chat => "chat",
            Door::Echo => "echo-protocol",
        }
    }
}

/// Serves one TCP connection, from the request head to the end. `handshake` is its place
/// among the connections still being read as HTTP, given back once that is over.
pub fn serve(socket: &Arc<TcpStream>, context: &Context, conn: ConnId, handshake: Handshake) {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let (request, already_read) = match http::read_head(socket, deadline) {
        Ok(head) => head,
        Err(err) => {
            debug!("conn {conn}: no request: {err:?}");
            if let Some(status) = err.status() {
                let _ = http::respond_error(socket, status, "could not read a request", &[]);
            }
            return;
        }
    };
    debug!("conn {conn}: {:?} {:?}", request.method, request.path);
    if request.method != "GET" {
        let _ = http::respond_error(socket, 405, "only GET is served", &[("Allow", "GET")]);
        return;
    }
    if request.is_upgrade() {
        upgrade(socket, context, conn, request, already_read, handshake);
    } else {
        plain::answer(socket, context, &request);
    }
}

/// Tells the hub a connection is gone when dropped, even if its thread panicked.
struct Registration<'a> {
    hub: &'a SyncSender<Event>,
    conn: ConnId,
    left: bool,
}

impl Registration<'_> {
    /// Tells the hub the connection ended, giving it the close frame to queue after whatever
    /// it still owes the client. False if the hub is gone: then nobody sends it.
    fn leave(mut self, close: Option<Bytes>) -> bool {
        self.left = true;
        let conn = self.conn;
        self.hub.send(Event::Disconnect { conn, close }).is_ok()
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if !self.left {
            let conn = self.conn;
            let _ = self.hub.send(Event::Disconnect { conn, close: None });
        }
    }
}

/// Answers an upgrade with `101` and serves the door it asks for, or refuses it with the status
/// the reference names (docs/reference.md).
fn upgrade(
    socket: &Arc<TcpStream>,
    context: &Context,
    conn: ConnId,
    request: RequestHead,
    already_read: Vec<u8>,
    handshake: Handshake,
) {
    let Some(door) = Door::for_path(&request.path) else {
        let _ = http::respond_error(socket, 404, "no WebSocket here: try / or /echo", &[]);
        return;
    };
    let answer = match http::accept_upgrade(&request, door.subprotocol(), &context.config) {
        Ok(answer) => answer,
        Err(refused) => {
            info!(
                "conn {conn}: refused upgrade ({} {})",
                refused.status, refused.reason
            );
            let headers = refused.headers();
            let _ = http::respond_error(socket, refused.status, refused.reason, headers);
            return;
        }
    };
    let place = match context.budget.place(&handshake) {
        Ok(place) if !context.stopping.load(Ordering::SeqCst) => place,
        refused => {
            let why = refused.err().unwrap_or(AtCapacity::Connections);
            if let Some(also) = REFUSED.allow() {
                let limit = match why {
                    AtCapacity::Connections => {
                        format!("{} connections at most; ", context.config.max_connections)
                    }
                    _ => String::new(),
                };
                warn!(
                    "conn {conn}: refused: {} ({limit}{also} more refused since)",
                    why.reason()
                );
            }
            let _ = http::respond_error(socket, 503, why.reason(), &[("Retry-After", "5")]);
            return;
        }
    };
    // Nobody else can write yet: the hub does not know this connection.
    if let Err(err) = (&**socket).write_all(answer.as_bytes()) {
        debug!("conn {conn}: could not answer the handshake: {err}");
        return;
    }
    drop(handshake);
    let outbox = Outbox::new(Arc::clone(socket), &context.outbound);
    let (username, channel) = (
        request.query_param("username"),
        request.query_param("channel"),
    );
    // The request is not needed past this point; a long-lived connection should not keep it.
    drop(request);
    let ping_interval = context.config.ping_interval;
    let mut reader = Reader::new(
        Arc::clone(socket),
        already_read,
        outbox.clone(),
        ping_interval,
    );
    let registration = Registration {
        hub: &context.hub,
        conn,
        left: false,
    };
    let ended = match door {
        Door::Chat => {
            let connect = Event::Connect {
                conn,
                outbox,
                username,
                channel,
            };
            if context.hub.send(connect).is_err() {
                Ended::ServerStopping
            } else {
                chat::serve(&mut reader, conn, &context.hub, context.config.max_rate)
            }
        }
        Door::Echo => {
            if context.hub.send(Event::Attach { conn, outbox }).is_err() {
                Ended::ServerStopping
            } else {
                echo::serve(&mut reader)
            }
        }
    };
    info!("conn {conn} ({door:?}) ended: {ended:?}");
    let close = reader.closing_frame(&ended);
    // A chat client's frames all come from the hub, so its close must too, or it would
    // overtake the answers to what the client sent before it (its own messages, refusals).
    // The echo door's answers are this thread's own: its close follows them from here.
    // Either way the hub hears of it first, so the channel hears `left` now, not after the
    // closing handshake.
    let hub_closes = match door {
        Door::Chat => registration.leave(close.clone()),
        Door::Echo => {
            registration.leave(None);
            false
        }
    };
    reader.finish(&ended, close, !hub_closes);
    drop(place);
}
