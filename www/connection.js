// Connection: the WebSocket: connects with our name and channel, reconnects with backoff, sends.
// It never reconnects by itself once an operator removed us (4001) or the server refused us
// (4003): Access says so, and the person's Connect starts again.
'use strict';

const Connection = (() => {
  const TITLE = 'Cyber Chat';
  const BACKOFF_START_S = 1; // first retry after 1 s…
  const BACKOFF_MAX_S = 30; // …doubling up to 30 s (each stretched at random: see below)
  const HANDSHAKE_TIMEOUT_MS = 10000; // give up on a connection attempt that hangs

  let serverUrl = Settings.serverUrl;
  let ws = null;
  let connected = false; // true once the welcome arrived on the current socket
  let backoff = BACKOFF_START_S;
  let retryTimer = null;
  let started = false; // connect() was called: we have a name to go in with

  // `asked`: the person asked for it (Connect, a room code typed): it goes ahead even where
  // Access would hold the page back by itself (a ban this browser remembers).
  function connect({ asked = false } = {}) {
    started = true;
    clearTimeout(retryTimer);
    retryTimer = null;
    if (!asked && Access.holdBack()) return;
    Access.onConnecting();
    View.setStatus('Connecting…', 'connecting');

    // Name and channel travel in the query, so after a reconnect we are back where we were.
    const url = new URL(serverUrl);
    const name = Room.nameForQuery();
    if (name) url.searchParams.set('username', name);
    url.searchParams.set('channel', Room.channel);

    let socket;
    try {
      socket = new WebSocket(url.href, 'chat'); // `chat` is the chat door's subprotocol
    } catch (e) {
      View.showError('Cannot connect to ' + serverUrl + ': ' + e.message);
      scheduleReconnect();
      return;
    }
    ws = socket;

    // A server that accepts the TCP connection but never answers would leave us "Connecting…"
    // for minutes: close it ourselves, which schedules the next try.
    const handshakeTimer = setTimeout(() => {
      if (socket.readyState === WebSocket.CONNECTING) socket.close();
    }, HANDSHAKE_TIMEOUT_MS);
    let opened = false; // the server answered the handshake with its 101
    socket.addEventListener('open', () => {
      opened = true;
      clearTimeout(handshakeTimer);
    });

    socket.addEventListener('message', (event) => {
      if (socket !== ws) return; // a late frame from a socket we already gave up
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (e) {
        return; // not JSON: nothing we can show
      }
      if (frame && typeof frame.type === 'string') Frames.handle(frame);
    });

    socket.addEventListener('close', (event) => {
      clearTimeout(handshakeTimer);
      if (socket !== ws) return; // we closed it on purpose (e.g. the address changed)
      ws = null;
      connected = false;
      Typing.reset();
      Cursors.clear();
      Moderation.reset(); // a mute ends with its connection
      if (Access.onClosed(event.code, event.reason, opened)) return; // it said why, and we stop
      // A refused handshake reaches a browser as a bare 1006: it cannot tell a server that is
      // down from one that refuses this address, and says so.
      if (!opened) {
        View.showNotice(
          'Cannot reach the chat at ' + serverUrl + '. Either it is down, or it refuses this ' +
            'page (a ban by an operator, or an origin it does not allow): a browser is not told which. ' +
            'This page keeps trying.',
        );
      }
      scheduleReconnect();
    });
    // An `error` event is always followed by `close`, which does the work.
  }

  // Wait, counting down on screen, then try again; each failure doubles the wait (1 s, 2 s, …,
  // at most 30 s), and the wait is stretched by a random part of itself (1 to 2 s, then 2 to
  // 4 s, …, at most 30 to 60 s): a class whose pages lost the server together (a restart, or
  // more arriving from one school address than the server lets in at once) must not all come
  // back in the same second, to be refused together again.
  function scheduleReconnect() {
    clearTimeout(retryTimer);
    const wait = backoff * (1 + Math.random()); // seconds
    backoff = Math.min(backoff * 2, BACKOFF_MAX_S);
    let left = Math.floor(wait);
    const tick = () => {
      if (left <= 0) {
        connect();
        return;
      }
      View.setStatus('Disconnected — retrying in ' + left + ' s', 'disconnected');
      left -= 1;
      retryTimer = setTimeout(tick, 1000);
    };
    // The fraction of a second first, so that the countdown ends when the wait does.
    View.setStatus('Disconnected — retrying in ' + Math.ceil(wait) + ' s', 'disconnected');
    retryTimer = setTimeout(tick, (wait - left) * 1000);
  }

  // The server's welcome: we are in, and a good connection resets the backoff.
  function welcomed() {
    connected = true;
    backoff = BACKOFF_START_S;
    View.setStatus('Connected to ' + TITLE, 'connected');
  }

  // Drop the current socket (without triggering a retry) and connect to `url` right away;
  // before the first connect (no name yet), only remember it. The person asked for it.
  function changeServer(url) {
    serverUrl = url;
    if (!started) return;
    drop('changing server');
    backoff = BACKOFF_START_S;
    connect({ asked: true });
  }

  // No more tries until the person asks: the heading says `status`, the notice `why`.
  function stop(status, why) {
    drop('not going in');
    clearTimeout(retryTimer);
    retryTimer = null;
    View.setStatus(status, 'disconnected');
    View.showNotice(why);
  }

  // Closes the current socket, if any, without its close scheduling a retry.
  function drop(reason) {
    const old = ws;
    ws = null;
    connected = false;
    if (old) old.close(1000, reason);
    Typing.reset();
    Cursors.clear();
  }

  // False (and nothing sent) unless we are connected and welcomed.
  function send(frame) {
    if (!ws || !connected || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  // A `hello` (the room code, the operator token) goes as soon as the socket is open: a locked
  // connection has had no welcome. False if there is no open socket.
  function sendHello(frame) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  return {
    connect,
    changeServer,
    stop,
    welcomed,
    send,
    sendHello,
    isConnected: () => connected,
    hasStarted: () => started,
    serverUrl: () => serverUrl,
  };
})();
