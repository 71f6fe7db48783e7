// Cyber Chat browser client.
//
// Plain JavaScript, no framework and no build step, so that it can be read top to bottom.
// The wire format is described in PROTOCOL.md: every frame is one JSON object with a `type`.
//
// Golden rule of this file: text that came from the network is NEVER inserted as HTML.
// We only ever use textContent and createElement, so a message like
// `<img src=x onerror=alert(1)>` is shown as those characters and cannot run.
'use strict';

(function () {
  // ---------------------------------------------------------------------------------------
  // Settings
  // ---------------------------------------------------------------------------------------

  const TITLE = 'Cyber Chat';
  const BACKOFF_START_S = 1; // first retry after 1 s…
  const BACKOFF_MAX_S = 30; // …doubling up to 30 s
  const HANDSHAKE_TIMEOUT_MS = 10000; // give up on a connection attempt that hangs
  const TYPING_IDLE_MS = 3000; // we say "stopped typing" after 3 s without a keystroke
  const TYPING_EXPIRE_MS = 5000; // forget someone's "typing" after 5 s without news
  const CURSOR_INTERVAL_MS = 66; // at most ~15 cursor updates a second (the server rate-limits)
  const NEAR_BOTTOM_PX = 60; // "the user is reading the latest lines" if this close to the end
  const ERROR_VISIBLE_MS = 8000;
  const STORAGE_NAME = 'cyberchat.username';

  // ---------------------------------------------------------------------------------------
  // Elements (ids are stable: the end-to-end tests use them too)
  // ---------------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $('status'),
    serverForm: $('server-form'),
    server: $('server'),
    sidebarToggle: $('sidebar-toggle'),
    sidebar: $('sidebar'),
    nameForm: $('name-form'),
    username: $('username'),
    nameHint: $('name-hint'),
    usersChannel: $('users-channel'),
    userCount: $('user-count'),
    users: $('users'),
    channels: $('channels'),
    joinForm: $('join-form'),
    channelInput: $('channel-input'),
    cursorsToggle: $('cursors-toggle'),
    channelTitle: $('channel-title'),
    messages: $('messages'),
    typing: $('typing'),
    error: $('error'),
    sendForm: $('send-form'),
    input: $('input'),
    cursors: $('cursors'),
  };

  // ---------------------------------------------------------------------------------------
  // State
  // ---------------------------------------------------------------------------------------

  const params = new URLSearchParams(location.search);

  const state = {
    serverUrl: initialServerUrl(),
    // The name the person chose (from ?username=…, localStorage or the name field). It only
    // changes when they pick another one, never to a guest name the server handed out.
    wantedName: (params.get('username') || loadName() || '').trim(),
    channel: (params.get('channel') || 'general').trim().toLowerCase(),
    ws: null,
    connected: false, // true once the welcome arrived on the current socket
    me: null, // { id, username } from the last welcome
    myIds: new Set(), // every id we had in this page: own messages stay "own" after a reconnect
    users: new Map(), // id -> { id, username, state } for the current channel
    seen: new Set(), // message ids already on screen (no duplicates after a reconnect)
    channelList: [], // [{ name, count }] from the last `channels` frame
    typingPeople: new Map(), // id -> { username, timer }
    backoff: BACKOFF_START_S,
    retryTimer: null,
    amTyping: false,
    typingTimer: null,
    cursorsOn: false,
    cursorPending: null, // latest pointer position not yet sent
    cursorTimer: null,
    lastCursorSent: 0,
    errorTimer: null,
  };

  function initialServerUrl() {
    const fromQuery = params.get('server');
    if (fromQuery) {
      const url = normaliseServerUrl(fromQuery);
      if (url) return url;
    }
    // Opened from disk: the server is most likely running on this machine.
    if (location.protocol === 'file:') return 'ws://localhost:1337/';
    // Served by the chat server itself: talk back to the same host, encrypted if the page is.
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return scheme + '//' + location.host + '/';
  }

  // Accepts "ws://host:port/", "wss://…", "http(s)://…" or just "host:port".
  // Returns a clean ws:// or wss:// URL without query, or null if it makes no sense.
  function normaliseServerUrl(text) {
    let t = String(text).trim();
    if (!t) return null;
    if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(t)) t = 'ws://' + t;
    let url;
    try {
      url = new URL(t);
    } catch (e) {
      return null;
    }
    if (url.protocol === 'http:') url.protocol = 'ws:';
    if (url.protocol === 'https:') url.protocol = 'wss:';
    if (url.protocol !== 'ws:' && url.protocol !== 'wss:') return null;
    url.search = '';
    url.hash = '';
    return url.href;
  }

  // localStorage can throw (privacy modes, some file:// setups): a chat must still work.
  function loadName() {
    try {
      return localStorage.getItem(STORAGE_NAME);
    } catch (e) {
      return null;
    }
  }
  function saveName(name) {
    try {
      localStorage.setItem(STORAGE_NAME, name);
    } catch (e) {
      /* not remembered, never mind */
    }
  }

  // ---------------------------------------------------------------------------------------
  // Connection, with reconnection
  // ---------------------------------------------------------------------------------------

  // The heading and the tab title always say the same thing.
  function setStatus(text, kind) {
    el.status.textContent = text;
    document.title = text;
    document.body.classList.remove('is-connected', 'is-connecting', 'is-disconnected');
    document.body.classList.add('is-' + kind);
  }

  function connect() {
    clearTimeout(state.retryTimer);
    state.retryTimer = null;
    setStatus('Connecting…', 'connecting');

    // Name and channel travel in the query, so after a reconnect we are back where we were
    // (someone who never chose a name keeps the guest name they had).
    const url = new URL(state.serverUrl);
    const name = state.wantedName || (state.me && state.me.username);
    if (name) url.searchParams.set('username', name);
    url.searchParams.set('channel', state.channel);

    let ws;
    try {
      ws = new WebSocket(url.href, 'chat'); // `chat` is the chat door's subprotocol
    } catch (e) {
      showError('Cannot connect to ' + state.serverUrl + ': ' + e.message);
      scheduleReconnect();
      return;
    }
    state.ws = ws;

    // A server that accepts the TCP connection but never answers would leave us "Connecting…"
    // for minutes: close it ourselves, which schedules the next try.
    const handshakeTimer = setTimeout(() => {
      if (ws.readyState === WebSocket.CONNECTING) ws.close();
    }, HANDSHAKE_TIMEOUT_MS);
    ws.addEventListener('open', () => clearTimeout(handshakeTimer));

    ws.addEventListener('message', (event) => {
      if (ws !== state.ws) return; // a late frame from a socket we already gave up
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (e) {
        return; // not JSON: nothing we can show
      }
      if (frame && typeof frame.type === 'string') handleFrame(frame);
    });

    ws.addEventListener('close', () => {
      clearTimeout(handshakeTimer);
      if (ws !== state.ws) return; // we closed it on purpose (e.g. the address changed)
      state.ws = null;
      state.connected = false;
      state.amTyping = false;
      clearTypingPeople();
      clearCursors();
      scheduleReconnect();
    });
    // An `error` event is always followed by `close`, which does the work.
  }

  // Wait, counting down on screen, then try again; each failure doubles the wait (max 30 s).
  function scheduleReconnect() {
    clearTimeout(state.retryTimer);
    let left = state.backoff;
    state.backoff = Math.min(state.backoff * 2, BACKOFF_MAX_S);
    const tick = () => {
      if (left <= 0) {
        connect();
        return;
      }
      setStatus('Disconnected — retrying in ' + left + ' s', 'disconnected');
      left -= 1;
      state.retryTimer = setTimeout(tick, 1000);
    };
    tick();
  }

  // Drop the current socket (without triggering a retry) and connect right away.
  function reconnectNow() {
    const old = state.ws;
    state.ws = null;
    state.connected = false;
    if (old) old.close(1000, 'changing server');
    state.backoff = BACKOFF_START_S;
    clearTypingPeople();
    clearCursors();
    connect();
  }

  function send(frame) {
    if (!state.ws || !state.connected || state.ws.readyState !== WebSocket.OPEN) return false;
    state.ws.send(JSON.stringify(frame));
    return true;
  }

  // ---------------------------------------------------------------------------------------
  // Frames from the server
  // ---------------------------------------------------------------------------------------

  function handleFrame(f) {
    switch (f.type) {
      case 'welcome':
        onWelcome(f);
        break;
      case 'message':
        if (f.channel === undefined || f.channel === state.channel) {
          setTyping(f.user, false);
          addMessage(f, isMine(f.user) /* always scroll to what we just said */);
        }
        break;
      case 'joined':
        if (f.user) state.users.set(f.user.id, { ...f.user, state: {} });
        renderUsers();
        updateChannelCount(f.channel, f.count);
        addSystem(f.text || displayName(f.user) + ' has joined the chat');
        break;
      case 'left':
        if (f.user) {
          reclaimName(f.user);
          state.users.delete(f.user.id);
          setTyping(f.user, false);
          removeCursor(f.user.id);
        }
        renderUsers();
        updateChannelCount(f.channel, f.count);
        addSystem(f.text || displayName(f.user) + ' has left the chat');
        break;
      case 'renamed':
        onRenamed(f);
        break;
      case 'typing':
        setTyping(f.user, f.typing === true);
        break;
      case 'state':
        if (f.user && state.users.has(f.user.id)) {
          state.users.get(f.user.id).state = f.state || {};
          drawCursor(f.user.id);
        }
        break;
      case 'channels':
        state.channelList = Array.isArray(f.channels) ? f.channels : [];
        renderChannels();
        break;
      case 'error':
        showError(f.message || f.code || 'Something went wrong', f.code);
        break;
      default:
        // Unknown frame types are ignored: the protocol may grow new ones.
        break;
    }
  }

  function onWelcome(f) {
    state.connected = true;
    state.backoff = BACKOFF_START_S; // a good connection resets the backoff
    setStatus('Connected to ' + TITLE, 'connected');

    state.me = f.user;
    state.myIds.add(f.user.id);
    state.channel = f.channel;
    // Remember the name only if it is the one we asked for, not a guest name the server
    // picked because ours was taken (the `error` frame after this welcome says why).
    if (state.wantedName && sameName(f.user.username, state.wantedName)) {
      state.wantedName = f.user.username;
      saveName(f.user.username);
    }
    if (document.activeElement !== el.username) el.username.value = f.user.username;
    el.nameHint.hidden = Boolean(state.wantedName);

    state.users = new Map();
    for (const u of f.users || []) state.users.set(u.id, { ...u, state: u.state || {} });
    state.amTyping = false;
    clearTypingPeople();
    clearCursors();
    for (const id of state.users.keys()) drawCursor(id);

    // A welcome carries the channel's whole recent history: start from a clean list, so a
    // reconnect or a channel switch never shows a line twice.
    el.messages.replaceChildren();
    state.seen = new Set();
    for (const m of f.history || []) addMessage(m, false);
    scrollToBottom();

    el.channelTitle.textContent = '#' + f.channel;
    el.usersChannel.textContent = '#' + f.channel;
    renderUsers();
    renderChannels();

    // The channel list with counts is only sent on request (or when channels come and go).
    send({ type: 'channels' });
  }

  function onRenamed(f) {
    if (!f.user) return;
    const u = state.users.get(f.user.id);
    if (u) u.username = f.user.username;
    else state.users.set(f.user.id, { ...f.user, state: {} });
    const typing = state.typingPeople.get(f.user.id);
    if (typing) typing.username = f.user.username;
    if (state.me && f.user.id === state.me.id) {
      state.me.username = f.user.username;
      state.wantedName = f.user.username;
      el.username.value = f.user.username;
      saveName(f.user.username);
      el.nameHint.hidden = true;
      hideError();
    }
    renderUsers();
    renderTyping();
    drawCursor(f.user.id);
    addSystem(f.text || (f.old + ' is now known as ' + f.user.username));
  }

  function sameName(a, b) {
    return String(a).toLowerCase() === String(b).toLowerCase();
  }

  // After a network hiccup the server may still hold our old connection, and with it our
  // name, so we came back as a guest. When that old connection leaves, take the name back.
  function reclaimName(leaver) {
    if (!state.me || !state.wantedName) return;
    if (sameName(state.me.username, state.wantedName)) return;
    if (sameName(leaver.username, state.wantedName)) {
      send({ type: 'username', username: state.wantedName });
    }
  }

  function isMine(user) {
    return Boolean(user && state.myIds.has(user.id));
  }

  function displayName(user) {
    return (user && user.username) || 'someone';
  }

  // ---------------------------------------------------------------------------------------
  // The message list
  // ---------------------------------------------------------------------------------------

  // Only follow new lines if the reader is already at the end: someone scrolled up to read
  // older lines should not be yanked down by every new message.
  function isNearBottom() {
    const m = el.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < NEAR_BOTTOM_PX;
  }
  function scrollToBottom() {
    el.messages.scrollTop = el.messages.scrollHeight;
  }

  function addMessage(m, forceScroll) {
    if (typeof m.id === 'number' || typeof m.id === 'string') {
      if (state.seen.has(m.id)) return; // already shown
      state.seen.add(m.id);
    }
    const follow = forceScroll || isNearBottom();

    const li = document.createElement('li');
    li.className = 'msg';
    if (isMine(m.user)) li.classList.add('own');
    if (m.id !== undefined) li.dataset.id = String(m.id);

    const author = document.createElement('span');
    author.className = 'author';
    author.textContent = displayName(m.user);
    if (m.user) author.style.color = colourFor(m.user.id);

    const time = document.createElement('time');
    time.className = 'time';
    const when = new Date(typeof m.ts === 'number' ? m.ts : Date.now());
    time.dateTime = when.toISOString();
    time.textContent = when.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    time.title = when.toLocaleString();

    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = String(m.text); // textContent: shown literally, never parsed as HTML

    const meta = document.createElement('div');
    meta.className = 'meta';
    meta.append(author, time);
    li.append(meta, text);
    el.messages.append(li);
    if (follow) scrollToBottom();
  }

  function addSystem(text) {
    const follow = isNearBottom();
    const li = document.createElement('li');
    li.className = 'system';
    li.textContent = text;
    el.messages.append(li);
    if (follow) scrollToBottom();
  }

  // A stable colour per user id, so a name always has the same colour. (FNV-1a hash of
  // the id, turned into a hue: similar ids still get very different colours.)
  function colourFor(id) {
    let h = 2166136261;
    for (const c of String(id)) h = Math.imul(h ^ c.codePointAt(0), 16777619) >>> 0;
    return 'hsl(' + (h % 360) + ' 85% 66%)';
  }

  // ---------------------------------------------------------------------------------------
  // Sidebar: people and channels
  // ---------------------------------------------------------------------------------------

  function renderUsers() {
    const list = [...state.users.values()].sort((a, b) =>
      a.username.localeCompare(b.username, undefined, { sensitivity: 'base' }),
    );
    el.users.replaceChildren(
      ...list.map((u) => {
        const li = document.createElement('li');
        li.className = 'user';
        li.dataset.id = u.id;
        const dot = document.createElement('span');
        dot.className = 'dot';
        dot.style.background = colourFor(u.id);
        const name = document.createElement('span');
        name.className = 'name';
        name.textContent = u.username;
        li.append(dot, name);
        if (state.me && u.id === state.me.id) {
          li.classList.add('me');
          const you = document.createElement('span');
          you.className = 'muted';
          you.textContent = ' (you)';
          li.append(you);
        }
        return li;
      }),
    );
    el.userCount.textContent = String(state.users.size);
    el.sidebarToggle.textContent = 'People (' + state.users.size + ') & channels';
  }

  function renderChannels() {
    const list = state.channelList.slice();
    // The channel we are in is always listed, even before the server's list arrives.
    if (!list.some((c) => c.name === state.channel)) {
      list.push({ name: state.channel, count: state.users.size });
    }
    list.sort((a, b) => a.name.localeCompare(b.name));
    el.channels.replaceChildren(
      ...list.map((c) => {
        const li = document.createElement('li');
        const button = document.createElement('button');
        button.type = 'button';
        button.className = 'channel';
        button.dataset.channel = c.name;
        const name = document.createElement('span');
        name.className = 'name';
        name.textContent = '#' + c.name;
        const count = document.createElement('span');
        count.className = 'count badge';
        count.textContent = String(c.count);
        button.append(name, count);
        if (c.name === state.channel) {
          button.classList.add('current');
          button.setAttribute('aria-current', 'true');
        }
        li.append(button);
        return li;
      }),
    );
  }

  // joined/left carry the channel's new head count: keep our channel's number fresh without
  // asking the server for the whole list again.
  function updateChannelCount(channel, count) {
    if (typeof count !== 'number') return;
    const c = state.channelList.find((x) => x.name === (channel || state.channel));
    if (c) c.count = count;
    renderChannels();
  }

  function joinChannel(name) {
    const channel = String(name).trim().toLowerCase().replace(/^#/, '');
    if (!channel) return;
    if (channel === state.channel) return;
    if (!send({ type: 'join', channel })) {
      showError('Not connected: cannot join #' + channel + ' right now.');
    }
    // The server answers with a welcome for the new channel (or an invalid_channel error).
  }

  // ---------------------------------------------------------------------------------------
  // "Alex is typing…"
  // ---------------------------------------------------------------------------------------

  function setTyping(user, typing) {
    if (!user || isMine(user)) return;
    const old = state.typingPeople.get(user.id);
    if (old) clearTimeout(old.timer);
    if (typing) {
      // Nobody tells us if their browser vanished: forget them after a few quiet seconds.
      const timer = setTimeout(() => setTyping(user, false), TYPING_EXPIRE_MS);
      state.typingPeople.set(user.id, { username: user.username, timer });
    } else {
      state.typingPeople.delete(user.id);
    }
    renderTyping();
  }

  function clearTypingPeople() {
    for (const t of state.typingPeople.values()) clearTimeout(t.timer);
    state.typingPeople.clear();
    renderTyping();
  }

  function renderTyping() {
    const names = [...state.typingPeople.values()].map((t) => t.username);
    let text = '';
    if (names.length === 1) text = names[0] + ' is typing…';
    else if (names.length === 2) text = names[0] + ' and ' + names[1] + ' are typing…';
    else if (names.length > 2) text = names.length + ' people are typing…';
    el.typing.textContent = text;
  }

  // Tell the others when we start typing, and when we stop (idle, cleared or sent).
  function onInputChanged() {
    const hasText = el.input.value.trim() !== '';
    clearTimeout(state.typingTimer);
    if (hasText) {
      if (!state.amTyping && send({ type: 'typing', typing: true })) state.amTyping = true;
      state.typingTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
    } else {
      stopTyping();
    }
  }
  function stopTyping() {
    clearTimeout(state.typingTimer);
    if (state.amTyping) send({ type: 'typing', typing: false });
    state.amTyping = false;
  }

  // ---------------------------------------------------------------------------------------
  // Live cursors (the tutorial's live-state step)
  // ---------------------------------------------------------------------------------------

  function setCursorsOn(on) {
    state.cursorsOn = on;
    el.cursors.hidden = !on;
    if (on) {
      for (const id of state.users.keys()) drawCursor(id);
    } else {
      // Our state is kept by the server and shown to others: clear it so our pointer vanishes.
      clearTimeout(state.cursorTimer);
      state.cursorPending = null;
      send({ type: 'state', state: {} });
      clearCursors();
    }
  }

  // Throttle: send at once if we have been quiet for a while, otherwise send the latest
  // position when the interval is over. Positions are fractions of the viewport, so people
  // with different window sizes see the pointer at the same relative place.
  function onPointerMove(event) {
    if (!state.cursorsOn) return;
    state.cursorPending = {
      x: Math.round((event.clientX / window.innerWidth) * 10000) / 10000,
      y: Math.round((event.clientY / window.innerHeight) * 10000) / 10000,
    };
    if (state.cursorTimer) return;
    const wait = Math.max(0, state.lastCursorSent + CURSOR_INTERVAL_MS - Date.now());
    state.cursorTimer = setTimeout(flushCursor, wait);
  }
  function flushCursor() {
    state.cursorTimer = null;
    if (!state.cursorPending) return;
    send({ type: 'state', state: state.cursorPending });
    state.cursorPending = null;
    state.lastCursorSent = Date.now();
  }

  function drawCursor(id) {
    if (!state.cursorsOn || (state.me && id === state.me.id)) return;
    const user = state.users.get(id);
    const s = user && user.state;
    const valid = s && Number.isFinite(s.x) && Number.isFinite(s.y);
    let c = el.cursors.querySelector('[data-id="' + CSS.escape(id) + '"]');
    if (!valid) {
      if (c) c.remove();
      return;
    }
    if (!c) {
      c = document.createElement('div');
      c.className = 'cursor';
      c.dataset.id = id;
      const arrow = document.createElement('span');
      arrow.className = 'arrow';
      const label = document.createElement('span');
      label.className = 'label';
      c.append(arrow, label);
      el.cursors.append(c);
    }
    c.style.setProperty('--colour', colourFor(id));
    c.style.left = clamp01(s.x) * 100 + '%';
    c.style.top = clamp01(s.y) * 100 + '%';
    c.querySelector('.label').textContent = user.username;
  }

  function removeCursor(id) {
    const c = el.cursors.querySelector('[data-id="' + CSS.escape(id) + '"]');
    if (c) c.remove();
  }
  function clearCursors() {
    el.cursors.replaceChildren();
  }
  function clamp01(v) {
    return Math.min(1, Math.max(0, v));
  }

  // ---------------------------------------------------------------------------------------
  // Errors, shown next to the input
  // ---------------------------------------------------------------------------------------

  function showError(text, code) {
    el.error.textContent = text;
    if (code) el.error.dataset.code = code;
    else delete el.error.dataset.code;
    el.error.hidden = false;
    clearTimeout(state.errorTimer);
    state.errorTimer = setTimeout(hideError, ERROR_VISIBLE_MS);
  }
  function hideError() {
    clearTimeout(state.errorTimer);
    el.error.hidden = true;
    el.error.textContent = '';
    delete el.error.dataset.code;
  }

  // ---------------------------------------------------------------------------------------
  // What the user does
  // ---------------------------------------------------------------------------------------

  // Enter in the input submits the form; focus stays in the input for the next line.
  el.sendForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const text = el.input.value.trim();
    if (!text) return;
    if (!send({ type: 'message', text })) {
      showError('Not connected: your message was not sent (it is still in the box).');
      return;
    }
    el.input.value = '';
    stopTyping();
    el.input.focus();
  });
  el.input.addEventListener('input', onInputChanged);

  el.nameForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const name = el.username.value.trim();
    if (!name) return;
    if (state.me && name === state.me.username) return;
    if (state.connected) {
      send({ type: 'username', username: name }); // confirmed by a `renamed` frame
    } else {
      // Offline: use it in the query of the next connection.
      state.wantedName = name;
      saveName(name);
    }
  });

  el.joinForm.addEventListener('submit', (event) => {
    event.preventDefault();
    joinChannel(el.channelInput.value);
    el.channelInput.value = '';
  });

  // One listener for the whole list (event delegation): buttons are re-created often.
  el.channels.addEventListener('click', (event) => {
    const button = event.target.closest('button.channel');
    if (button) joinChannel(button.dataset.channel);
  });

  el.serverForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const url = normaliseServerUrl(el.server.value);
    if (!url) {
      showError('That is not a server address. Try ws://localhost:1337/');
      return;
    }
    el.server.value = url;
    state.serverUrl = url;
    reconnectNow();
  });

  el.sidebarToggle.addEventListener('click', () => {
    const open = !document.body.classList.contains('sidebar-open');
    document.body.classList.toggle('sidebar-open', open);
    el.sidebarToggle.setAttribute('aria-expanded', String(open));
  });

  el.cursorsToggle.addEventListener('change', () => setCursorsOn(el.cursorsToggle.checked));
  document.addEventListener('pointermove', onPointerMove, { passive: true });

  // ---------------------------------------------------------------------------------------
  // Start
  // ---------------------------------------------------------------------------------------

  el.server.value = state.serverUrl;
  el.username.value = state.wantedName;
  el.nameHint.hidden = Boolean(state.wantedName);
  if (params.get('cursors') === '1') {
    el.cursorsToggle.checked = true;
  }
  setCursorsOn(el.cursorsToggle.checked);
  renderUsers();
  renderChannels();
  connect();
})();
