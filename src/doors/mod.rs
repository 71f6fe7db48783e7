//! Every connection starts here (tutorial steps 0 and 1): its thread reads the HTTP head and
//! takes it through one of the port's doors — a WebSocket upgrade to the chat ([`chat`]) or to
//! the echo step ([`echo`]), or a plain `GET` for a file, `/stats` or `/metrics` ([`plain`]).
//! A locked chat ([`locked`]) keeps a connection at its door until it gives the room code, and
//! counts guesses per client address ([`guesses`]).

pub mod chat;
pub mod echo;
pub mod guesses;
pub mod locked;
pub mod plain;
pub mod rate;

use std::io::Write;
use std::net::{IpAddr, TcpStream};
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
use crate::hub::{Bans, Event, NewestInbox};
use crate::metrics::{Metrics, Refusal};
use crate::protocol::format_ts;
use crate::throttle::Throttle;
use guesses::Guesses;

/// What every connection's thread needs from the server.
pub struct Context {
    pub config: Config,
    pub hub: SyncSender<Event>,
    /// Where `state` and `typing` skip the hub's queue (see `hub/inbox.rs`).
    pub newest: Arc<NewestInbox>,
    pub budget: Arc<Budget>,
    pub outbound: Arc<OutboundBudget>,
    pub stopping: AtomicBool,
    /// Client addresses banned by operators (the hub writes it; see `hub/moderation.rs`).
    pub bans: Arc<Bans>,
    pub metrics: Arc<Metrics>,
    /// Wrong codes and tokens per client address.
    pub guesses: Guesses,
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

/// Serves one TCP connection from `peer`, from the request head to the end. `handshake` is its
/// place among the connections still being read as HTTP, given back once that is over.
pub fn serve(
    socket: &Arc<TcpStream>,
    context: &Context,
    conn: ConnId,
    handshake: Handshake,
    peer: IpAddr,
) {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let (request, already_read) = match http::read_head(socket, deadline) {
        Ok(head) => head,
        Err(err) => {
            debug!("conn {conn} from {peer}: no request: {err:?}");
            if let Some(status) = err.status() {
                let _ = http::respond_error(socket, status, "could not read a request", &[]);
            }
            return;
        }
    };
    // Behind a trusted proxy, only now is the client known: from here on every rule and
    // every log line is about it (see `http/forwarded.rs`).
    let client = http::client_address(peer, &request, &context.config.trust_proxy);
    debug!(
        "conn {conn} from {client}: {:?} {:?}",
        request.method, request.path
    );
    if let Err(full) = context.budget.attribute(&handshake, client) {
        refuse_for_capacity(socket, context, conn, client, full);
        return;
    }
    if request.method != "GET" {
        let _ = http::respond_error(socket, 405, "only GET is served", &[("Allow", "GET")]);
        return;
    }
    if request.is_upgrade() {
        upgrade(
            socket,
            context,
            conn,
            request,
            already_read,
            handshake,
            client,
        );
    } else {
        plain::answer(socket, context, &request);
    }
}

/// Answers 503 for a full budget, counts it, and says so in the log (at most every few seconds).
fn refuse_for_capacity(
    socket: &TcpStream,
    context: &Context,
    conn: ConnId,
    client: IpAddr,
    why: AtCapacity,
) {
    context.metrics.refused(Refusal::Capacity);
    if let Some(also) = REFUSED.allow() {
        let limit = match why {
            AtCapacity::Connections => {
                format!("{} connections at most; ", context.config.max_connections)
            }
            _ => String::new(),
        };
        warn!(
            "conn {conn} from {client}: refused: {} ({limit}{also} more refused since)",
            why.reason()
        );
    }
    let _ = http::respond_error(socket, 503, why.reason(), &[("Retry-After", "5")]);
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

/// Answers an upgrade from `client` with `101` and serves the door it asks for, or refuses it
/// with the status the reference names (docs/reference.md).
fn upgrade(
    socket: &Arc<TcpStream>,
    context: &Context,
    conn: ConnId,
    request: RequestHead,
    already_read: Vec<u8>,
    handshake: Handshake,
    client: IpAddr,
) {
    let Some(door) = Door::for_path(&request.path) else {
        let _ = http::respond_error(socket, 404, "no WebSocket here: try / or /echo", &[]);
        return;
    };
    let answer = match http::accept_upgrade(&request, door.subprotocol(), &context.config) {
        Ok(answer) => answer,
        Err(refused) => {
            info!(
                "conn {conn} from {client}: refused upgrade ({} {})",
                refused.status, refused.reason
            );
            let headers = refused.headers();
            let _ = http::respond_error(socket, refused.status, refused.reason, headers);
            return;
        }
    };
    if door == Door::Chat
        && let Some(until) = context.bans.until(client)
    {
        context.metrics.refused(Refusal::Banned);
        info!(
            "conn {conn} from {client}: refused: banned until {}",
            format_ts(until)
        );
        let why = format!(
            "your address is banned from this chat until {} (ts {until})",
            format_ts(until)
        );
        let _ = http::respond_error(socket, 403, &why, &[]);
        return;
    }
    let place = match context.budget.place(&handshake) {
        Ok(place) if !context.stopping.load(Ordering::SeqCst) => place,
        refused => {
            let why = refused.err().unwrap_or(AtCapacity::Connections);
            refuse_for_capacity(socket, context, conn, client, why);
            return;
        }
    };
    // Nobody else can write yet: the hub does not know this connection.
    if let Err(err) = (&**socket).write_all(answer.as_bytes()) {
        debug!("conn {conn}: could not answer the handshake: {err}");
        return;
    }
    drop(handshake);
    let _open = match door {
        Door::Chat => context.metrics.chat_open(),
        Door::Echo => context.metrics.echo_open(),
    };
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
            let arrival = Arrival {
                conn,
                outbox,
                username,
                channel,
                client,
            };
            enter_chat(&mut reader, context, arrival)
        }
        Door::Echo => {
            if context.hub.send(Event::Attach { conn, outbox }).is_err() {
                Ended::ServerStopping
            } else {
                echo::serve(&mut reader)
            }
        }
    };
    info!("conn {conn} ({door:?}) from {client} ended: {ended:?}");
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

/// A chat connection past its `101`, before it is a user.
struct Arrival {
    conn: ConnId,
    outbox: Outbox,
    username: Option<String>,
    channel: Option<String>,
    client: IpAddr,
}

/// Takes a chat connection in: through the locked door first if the room has a code (the hub
/// holds it meanwhile only to close it at shutdown), then to the hub as a user, and serves it
/// until it ends; returns why.
fn enter_chat(reader: &mut Reader, context: &Context, arrival: Arrival) -> Ended {
    let Arrival {
        conn,
        outbox,
        username,
        channel,
        client,
    } = arrival;
    let unlocked = match &context.config.room_code {
        Some(code) => {
            let attach = Event::Attach {
                conn,
                outbox: outbox.clone(),
            };
            if context.hub.send(attach).is_err() {
                return Ended::ServerStopping;
            }
            match locked::unlock(reader, context, client, code) {
                Ok(unlocked) => unlocked,
                Err(ended) => return ended,
            }
        }
        None => locked::Unlocked {
            operator: false,
            refusal: None,
        },
    };
    let connect = Event::Connect {
        conn,
        outbox,
        username,
        channel,
        address: client,
        operator: unlocked.operator,
    };
    if context.hub.send(connect).is_err() {
        return Ended::ServerStopping;
    }
    if let Some(frame) = unlocked.refusal
        && context.hub.send(Event::Reply { conn, frame }).is_err()
    {
        return Ended::ServerStopping;
    }
    chat::serve(reader, conn, context, client)
}
