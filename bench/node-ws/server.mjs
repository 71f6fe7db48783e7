#!/usr/bin/env node
// A chat server written the ordinary Node way (one process, the `ws` package) that speaks
// Cyber Chat's wire protocol (docs/reference.md), so cyberchat-bench can measure it beside
// Cyber Chat. A reference point for the bench, not part of Cyber Chat.
//
// Usage: server.mjs [--host H] [--port P] [--allow-origin O]... [--max-rate N]
//                   [--ping-interval S] [--max-connections N]   (other flags are ignored)

import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { WebSocketServer, WebSocket } from 'ws';

// ---- command line -------------------------------------------------------------------------

const config = {
  host: '127.0.0.1',
  port: process.env.PORT ?? '1337',
  allowOrigins: [],
  maxRate: '20',
  pingInterval: '30',
  maxConnections: '10000',
};

function fail(message) {
  process.stderr.write(`server.mjs: ${message}\n`);
  process.exit(2);
}

const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const flag = argv[i];
  const known = {
    '--host': 'host',
    '--port': 'port',
    '--allow-origin': 'allowOrigins',
    '--max-rate': 'maxRate',
    '--ping-interval': 'pingInterval',
    '--max-connections': 'maxConnections',
  }[flag];
  if (known) {
    if (i + 1 >= argv.length) fail(`${flag} needs a value`);
    const value = argv[++i];
    if (known === 'allowOrigins') config.allowOrigins.push(value);
    else config[known] = value;
  } else if (flag.startsWith('--') && i + 1 < argv.length && !argv[i + 1].startsWith('--')) {
    i++; // an unknown flag and its value (e.g. --log-level warn): ignored
  }
}

function number(name, value, { integer = true, min = 0, max = Infinity } = {}) {
  const n = Number(value);
  if (value === '' || !Number.isFinite(n) || (integer && !Number.isInteger(n)) || n < min || n > max) {
    fail(`bad value for ${name}: ${JSON.stringify(value)}`);
  }
  return n;
}

const PORT = number('--port', config.port, { max: 65535 });
const MAX_RATE = number('--max-rate', config.maxRate);
const PING_INTERVAL_MS = number('--ping-interval', config.pingInterval, { integer: false, min: 0.01 }) * 1000;
const MAX_CONNECTIONS = number('--max-connections', config.maxConnections, { min: 1 });

// ---- limits and names ---------------------------------------------------------------------

const MAX_PAYLOAD = 16 * 1024;
const MAX_TEXT = 2000;
const MAX_USERNAME = 32;
const MAX_STATE_BYTES = 1024;
const HISTORY_LEN = 100;
const MAX_DORMANT_HISTORIES = 1000;
const GENERAL = 'general';
const WELCOME_TEXT = 'Welcome to Cyber Chat';

const chars = (s) => [...s].length;
const CONTROL = /\p{Cc}/u;
const CHANNEL_NAME = /^[a-z0-9_-]{1,32}$/;

class Refusal {
  constructor(code, message) {
    this.code = code;
    this.message = message;
  }
}

function checkUsername(raw) {
  const name = raw.trim();
  const n = chars(name);
  if (n === 0 || n > MAX_USERNAME || CONTROL.test(name)) {
    return new Refusal('invalid_username', `a username must be 1 to ${MAX_USERNAME} characters, with no control characters`);
  }
  return name;
}

function checkChannel(raw) {
  const name = raw.toLowerCase();
  if (!CHANNEL_NAME.test(name)) {
    return new Refusal('invalid_channel', 'a channel name is 1 to 32 of a-z, 0-9, - and _');
  }
  return name;
}

// ---- the chat's state ---------------------------------------------------------------------

const users = new Set(); // every connected chat user
const names = new Map(); // lowercased username -> user
const channels = new Map([[GENERAL, new Set()]]); // channel name -> its users
const histories = new Map(); // channel name -> last HISTORY_LEN message frames
let nextMessageId = 1;
let messages = 0;
const started = Date.now();

const userRef = (user) => ({ id: user.id, username: user.username });
const taken = (name) => new Refusal('username_taken', `${JSON.stringify(name)} is taken`);

function send(user, json) {
  if (user.ws.readyState === WebSocket.OPEN) user.ws.send(json);
}

function sendFrame(user, frame) {
  send(user, JSON.stringify(frame));
}

function sendError(user, refusal) {
  sendFrame(user, { type: 'error', code: refusal.code, message: refusal.message });
}

// Serialized once, sent to every member of the channel (but `except`).
function broadcast(channel, frame, except) {
  const json = JSON.stringify(frame);
  for (const member of channels.get(channel) ?? []) {
    if (member !== except) send(member, json);
  }
}

function channelsFrame() {
  const list = [...channels].map(([name, members]) => ({ name, count: members.size }));
  return { type: 'channels', channels: list, online: users.size };
}

function broadcastChannels() {
  const json = JSON.stringify(channelsFrame());
  for (const user of users) send(user, json);
}

function guestName(id) {
  const hex = id.replaceAll('-', '');
  for (let n = 4; n <= hex.length; n++) {
    const name = `guest-${hex.slice(0, n)}`;
    if (!names.has(name)) return name;
  }
  return `guest-${hex}-${users.size}`;
}

// Puts a user into `channel` and tells the others there. Returns whether it was created.
function enter(user, channel) {
  let members = channels.get(channel);
  const created = !members;
  if (created) {
    members = new Set();
    channels.set(channel, members);
  }
  members.add(user);
  broadcast(channel, {
    type: 'joined',
    channel,
    user: userRef(user),
    count: members.size,
    text: `${user.username} has joined the chat`,
  }, user);
  return created;
}

// Takes a user out of `channel` and tells those left. Returns whether it was removed.
function leave(user, channel) {
  const members = channels.get(channel);
  if (!members) return false;
  members.delete(user);
  if (members.size === 0 && channel !== GENERAL) {
    channels.delete(channel);
    forgetDormantHistories();
    return true;
  }
  broadcast(channel, {
    type: 'left',
    channel,
    user: userRef(user),
    count: members.size,
    text: `${user.username} has left the chat`,
  });
  return false;
}

// Keeps the histories of removed channels, but not without bound.
function forgetDormantHistories() {
  let dormant = 0;
  for (const name of histories.keys()) if (!channels.has(name)) dormant++;
  for (const name of histories.keys()) {
    if (dormant <= MAX_DORMANT_HISTORIES) break;
    if (!channels.has(name)) {
      histories.delete(name);
      dormant--;
    }
  }
}

function welcome(user) {
  const members = channels.get(user.channel);
  sendFrame(user, {
    type: 'welcome',
    text: WELCOME_TEXT,
    user: userRef(user),
    channel: user.channel,
    users: [...members].map((u) => ({ id: u.id, username: u.username, state: u.state })),
    history: histories.get(user.channel) ?? [],
    online: users.size,
  });
}

function connect(ws, query) {
  const id = randomUUID();
  const refusals = [];
  let username;
  const wantedName = query.get('username');
  if (wantedName) {
    const checked = checkUsername(wantedName);
    if (checked instanceof Refusal) refusals.push(checked);
    else if (names.has(checked.toLowerCase())) refusals.push(taken(checked));
    else username = checked;
  }
  username ??= guestName(id);
  let channel = GENERAL;
  const wantedChannel = query.get('channel');
  if (wantedChannel) {
    const checked = checkChannel(wantedChannel);
    if (checked instanceof Refusal) refusals.push(checked);
    else channel = checked;
  }
  const user = { id, username, channel, state: {}, ws, tokens: 2 * MAX_RATE, refilled: Date.now() };
  users.add(user);
  names.set(username.toLowerCase(), user);
  const created = enter(user, channel);
  welcome(user);
  for (const refusal of refusals) sendError(user, refusal);
  if (created) broadcastChannels();
  return user;
}

function disconnect(user) {
  if (!users.delete(user)) return;
  const removed = leave(user, user.channel);
  names.delete(user.username.toLowerCase());
  if (removed) broadcastChannels();
}

// ---- requests -----------------------------------------------------------------------------

const badField = (name, what) => new Refusal('bad_request', `field "${name}" must be ${what}`);

function handle(user, data, isBinary) {
  let request;
  try {
    request = isBinary ? null : JSON.parse(data.toString());
  } catch {
    request = null;
  }
  if (request === null || typeof request !== 'object' || Array.isArray(request) || typeof request.type !== 'string') {
    return sendError(user, new Refusal('bad_json', 'expected a JSON object with a string "type"'));
  }
  switch (request.type) {
    case 'message': {
      if (typeof request.text !== 'string') return sendError(user, badField('text', 'a string'));
      const text = request.text.trim();
      const n = chars(text);
      if (n === 0 || n > MAX_TEXT) {
        return sendError(user, new Refusal('invalid_text', `a message must be 1 to ${MAX_TEXT} characters`));
      }
      const message = {
        type: 'message',
        id: nextMessageId++,
        channel: user.channel,
        user: userRef(user),
        text,
        ts: Date.now(),
      };
      messages++;
      let history = histories.get(user.channel);
      if (!history) histories.set(user.channel, (history = []));
      if (history.length === HISTORY_LEN) history.shift();
      history.push(message);
      return broadcast(user.channel, message);
    }
    case 'username': {
      if (typeof request.username !== 'string') return sendError(user, badField('username', 'a string'));
      const name = checkUsername(request.username);
      if (name instanceof Refusal) return sendError(user, name);
      const holder = names.get(name.toLowerCase());
      if (holder && holder !== user) return sendError(user, taken(name));
      const old = user.username;
      names.delete(old.toLowerCase());
      user.username = name;
      names.set(name.toLowerCase(), user);
      return broadcast(user.channel, {
        type: 'renamed',
        channel: user.channel,
        user: userRef(user),
        old,
        text: `${old} is now known as ${name}`,
      });
    }
    case 'join': {
      if (typeof request.channel !== 'string') return sendError(user, badField('channel', 'a string'));
      const channel = checkChannel(request.channel);
      if (channel instanceof Refusal) return sendError(user, channel);
      if (channel === user.channel) return welcome(user);
      const removed = leave(user, user.channel);
      user.channel = channel;
      const created = enter(user, channel);
      welcome(user);
      if (removed || created) broadcastChannels();
      return;
    }
    case 'typing': {
      if (typeof request.typing !== 'boolean') return sendError(user, badField('typing', 'a boolean'));
      return broadcast(user.channel, { type: 'typing', channel: user.channel, user: userRef(user), typing: request.typing }, user);
    }
    case 'state': {
      const state = request.state;
      if (state === null || typeof state !== 'object' || Array.isArray(state)) {
        return sendError(user, badField('state', 'an object'));
      }
      if (Buffer.byteLength(JSON.stringify(state)) > MAX_STATE_BYTES) {
        return sendError(user, new Refusal('invalid_state', `state must be at most ${MAX_STATE_BYTES} bytes of JSON`));
      }
      user.state = state;
      return broadcast(user.channel, { type: 'state', channel: user.channel, user: userRef(user), state }, user);
    }
    case 'channels':
      return sendFrame(user, channelsFrame());
    default:
      return sendError(user, new Refusal('unknown_type', `unknown message type ${JSON.stringify(request.type)}`));
  }
}

// A token bucket per connection: holds 2N, refills N a second; --max-rate 0 turns it off.
function allowed(user) {
  if (MAX_RATE === 0) return true;
  const now = Date.now();
  user.tokens = Math.min(2 * MAX_RATE, user.tokens + ((now - user.refilled) / 1000) * MAX_RATE);
  user.refilled = now;
  if (user.tokens < 1) return false;
  user.tokens -= 1;
  return true;
}

// ---- the doors ----------------------------------------------------------------------------

const chat = new WebSocketServer({
  noServer: true,
  maxPayload: MAX_PAYLOAD,
  perMessageDeflate: false,
  handleProtocols: (protocols) => (protocols.has('chat') ? 'chat' : false),
});
const echo = new WebSocketServer({
  noServer: true,
  maxPayload: MAX_PAYLOAD,
  perMessageDeflate: false,
  handleProtocols: (protocols) => (protocols.has('echo-protocol') ? 'echo-protocol' : false),
});

chat.on('connection', (ws, req) => {
  const user = connect(ws, new URL(req.url, 'http://x').searchParams);
  ws.lastSeen = Date.now();
  ws.on('message', (data, isBinary) => {
    ws.lastSeen = Date.now();
    if (!allowed(user)) return sendError(user, new Refusal('rate_limited', 'too many messages; slow down'));
    handle(user, data, isBinary);
  });
  ws.on('pong', () => (ws.lastSeen = Date.now()));
  ws.on('ping', () => (ws.lastSeen = Date.now()));
  ws.on('close', () => disconnect(user));
  ws.on('error', () => {}); // e.g. a message over maxPayload: ws closes with 1009 itself
});

echo.on('connection', (ws) => {
  ws.lastSeen = Date.now();
  ws.send('Hello webSocket');
  ws.on('message', (data, isBinary) => {
    ws.lastSeen = Date.now();
    ws.send(isBinary ? data : `I heard you say "${data}"`, { binary: isBinary });
  });
  ws.on('pong', () => (ws.lastSeen = Date.now()));
  ws.on('ping', () => (ws.lastSeen = Date.now()));
  ws.on('error', () => {});
});

function reply(res, status, type, body, headers = {}) {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

const plain = (res, status, body, headers) => reply(res, status, 'text/plain; charset=utf-8', body, headers);

// A connection that has not sent its whole request head within 10 s is dropped (checked each second).
const server = http.createServer({ headersTimeout: 10_000, connectionsCheckingInterval: 1000 }, (req, res) => {
  if (req.method !== 'GET') return plain(res, 405, 'only GET is served\n', { Allow: 'GET' });
  const { pathname } = new URL(req.url, 'http://x');
  if (pathname === '/stats') {
    const stats = {
      online: users.size,
      channels: [...channels].map(([name, members]) => ({ name, count: members.size })),
      messages,
      uptime_s: Math.floor((Date.now() - started) / 1000),
    };
    return reply(res, 200, 'application/json', JSON.stringify(stats));
  }
  if (pathname === '/' || pathname === '/chat' || pathname === '/echo') {
    return plain(res, 426, 'this is a WebSocket endpoint\n', { 'Sec-WebSocket-Version': '13' });
  }
  plain(res, 404, 'not found\n');
});

function refuse(socket, status, message) {
  socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nConnection: close\r\n` +
    `Content-Type: text/plain\r\nContent-Length: ${message.length + 1}\r\n\r\n${message}\n`);
}

server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => {});
  const { pathname } = new URL(req.url, 'http://x');
  const wss = pathname === '/' || pathname === '/chat' ? chat : pathname === '/echo' ? echo : null;
  if (!wss) return refuse(socket, 404, 'not found');
  const origin = req.headers.origin;
  if (config.allowOrigins.length > 0 && origin !== undefined && !config.allowOrigins.includes(origin)) {
    return refuse(socket, 403, 'origin not allowed');
  }
  const offered = req.headers['sec-websocket-protocol'];
  if (offered !== undefined) {
    const own = wss === chat ? 'chat' : 'echo-protocol';
    if (!offered.split(',').map((p) => p.trim()).includes(own)) {
      return refuse(socket, 400, `the subprotocol ${own} was not offered`);
    }
  }
  if (chat.clients.size + echo.clients.size >= MAX_CONNECTIONS) {
    return refuse(socket, 503, 'too many connections');
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});

// Keepalive: ping everyone each interval; drop those silent for two and a half intervals.
const keepalive = setInterval(() => {
  const now = Date.now();
  for (const ws of [...chat.clients, ...echo.clients]) {
    if (now - ws.lastSeen > 2.5 * PING_INTERVAL_MS) ws.terminate();
    else ws.ping();
  }
}, PING_INTERVAL_MS);

function shutdown() {
  clearInterval(keepalive);
  server.close();
  for (const ws of [...chat.clients, ...echo.clients]) ws.close(1001, 'server shutting down');
  setTimeout(() => process.exit(0), 2000).unref();
  const check = setInterval(() => {
    if (chat.clients.size + echo.clients.size === 0) process.exit(0);
  }, 50);
  check.unref();
}
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);

server.on('error', (err) => fail(`cannot listen on ${config.host}:${PORT}: ${err.message}`));
server.listen(PORT, config.host, () => {
  const { port } = server.address();
  process.stderr.write(`listening on ws://${config.host}:${port}\n`);
});
