// Connection: the WebSocket: connects with our name and channel, reconnects with backoff, sends.
'use strict';

const Connection = (() => {
  const TITLE = 'Cyber Chat';
  const BACKOFF_START_S = 1; // first retry after 1 s…
  const BACKOFF_MAX_S = 30; // …doubling up to 30 s
  const HANDSHAKE_TIMEOUT_MS = 10000; // give up on a connection attempt that hangs

  let serverUrl = Settings.serverUrl;
  let ws = null;
  let connected = false; // true once the welcome arrived on the current socket
  let backoff = BACKOFF_START_S;
  let retryTimer = null;
  let started = false; // connect() was called: we have a name to go in with

  function connect() {
    started = true;
    clearTimeout(retryTimer);
    retryTimer = null;
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
    socket.addEventListener('open', () => clearTimeout(handshakeTimer));

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

    socket.addEventListener('close', () => {
      clearTimeout(handshakeTimer);
      if (socket !== ws) return; // we closed it on purpose (e.g. the address changed)
      ws = null;
      connected = false;
      Typing.reset();
      Cursors.clear();
      scheduleReconnect();
    });
    // An `error` event is always followed by `close`, which does the work.
  }

  // Wait, counting down on screen, then try again; each failure doubles the wait (max 30 s).
  function scheduleReconnect() {
    clearTimeout(retryTimer);
    let left = backoff;
    backoff = Math.min(backoff * 2, BACKOFF_MAX_S);
    const tick = () => {
      if (left <= 0) {
        connect();
        return;
      }
      View.setStatus('Disconnected — retrying in ' + left + ' s', 'disconnected');
      left -= 1;
      retryTimer = setTimeout(tick, 1000);
    };
    tick();
  }

  // The server's welcome: we are in, and a good connection resets the backoff.
  function welcomed() {
    connected = true;
    backoff = BACKOFF_START_S;
    View.setStatus('Connected to ' + TITLE, 'connected');
  }

  // Drop the current socket (without triggering a retry) and connect to `url` right away;
  // before the first connect (no name yet), only remember it.
  function changeServer(url) {
    serverUrl = url;
    if (!started) return;
    const old = ws;
    ws = null;
    connected = false;
    if (old) old.close(1000, 'changing server');
    backoff = BACKOFF_START_S;
    Typing.reset();
    Cursors.clear();
    connect();
  }

  // False (and nothing sent) unless we are connected and welcomed.
  function send(frame) {
    if (!ws || !connected || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  return {
    connect,
    changeServer,
    welcomed,
    send,
    isConnected: () => connected,
    hasStarted: () => started,
    serverUrl: () => serverUrl,
  };
})();
