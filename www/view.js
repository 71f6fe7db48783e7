// View: draws the page (status, messages, people, channels, name, notices, errors) as text, never
// as HTML.
//
// Golden rule of the client: text that came from the network is NEVER inserted as HTML.
// We only ever use textContent and createElement, so a message like
// `<img src=x onerror=alert(1)>` is shown as those characters and cannot run.
'use strict';

const View = (() => {
  const NEAR_BOTTOM_PX = 60; // "the user is reading the latest lines" if this close to the end
  const ERROR_VISIBLE_MS = 8000;

  // Ids are stable: the end-to-end tests use them too.
  const $ = (id) => document.getElementById(id);
  const el = {
    status: $('status'),
    sidebarToggle: $('sidebar-toggle'),
    username: $('username'),
    nameHint: $('name-hint'),
    usersChannel: $('users-channel'),
    userCount: $('user-count'),
    users: $('users'),
    channels: $('channels'),
    channelTitle: $('channel-title'),
    messages: $('messages'),
    error: $('error'),
    notice: $('notice'),
    input: $('input'),
  };

  const STATUS_KINDS = ['connected', 'connecting', 'disconnected', 'waiting'];

  // Message ids already on screen, each with who sent it and when: the same message again
  // (from a history that overlaps what was shown live) is not shown twice, but a new message
  // given an id already shown (a count that started again, as step 8's after Redis lost its
  // data) is shown.
  const seen = new Map();
  let errorTimer = null;
  let statusText = '';
  let unread = 0;

  // The heading and the tab title always say the same thing; while the tab is hidden the
  // title also counts the messages that came meanwhile: "(3) Connected to Cyber Chat".
  function setStatus(text, kind) {
    statusText = text;
    el.status.textContent = text;
    renderTitle();
    for (const k of STATUS_KINDS) document.body.classList.toggle('is-' + k, k === kind);
  }
  function setUnread(count) {
    unread = count;
    renderTitle();
  }
  function renderTitle() {
    document.title = (unread > 0 ? '(' + unread + ') ' : '') + statusText;
  }

  // ---- The message list ----

  // Only follow new lines if the reader is already at the end: someone scrolled up to read
  // older lines should not be yanked down by every new message.
  function isNearBottom() {
    const m = el.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < NEAR_BOTTOM_PX;
  }
  function scrollToBottom() {
    el.messages.scrollTop = el.messages.scrollHeight;
  }

  // A welcome carries the channel's whole recent history: start from a clean list, so a
  // reconnect or a channel switch never shows a line twice.
  function clearMessages() {
    el.messages.replaceChildren();
    seen.clear();
  }

  // Shows one chat message and returns its line (null if it was already on screen).
  // `mentions`: [start, end) ranges of the text that mention us, highlighted.
  function addMessage(m, forceScroll, mentions = []) {
    if (typeof m.id === 'number' || typeof m.id === 'string') {
      const identity = String(m.ts) + ' ' + String(m.user && m.user.id);
      if (seen.get(m.id) === identity) return null; // already shown
      seen.set(m.id, identity);
    }
    const follow = forceScroll || isNearBottom();

    const li = document.createElement('li');
    li.className = 'msg';
    if (Room.isMine(m.user)) li.classList.add('own');
    if (mentions.length > 0) li.classList.add('mention');
    if (m.id !== undefined) li.dataset.id = String(m.id);

    const author = document.createElement('span');
    author.className = 'author';
    author.textContent = Room.displayName(m.user);
    if (m.user) author.style.color = colourFor(m.user.id);

    const time = document.createElement('time');
    time.className = 'time';
    const when = new Date(typeof m.ts === 'number' ? m.ts : Date.now());
    time.dateTime = when.toISOString();
    time.textContent = when.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    time.title = when.toLocaleString();

    const text = document.createElement('span');
    text.className = 'text';
    text.append(...highlighted(String(m.text), mentions));

    const meta = document.createElement('div');
    meta.className = 'meta';
    meta.append(author, time);
    li.append(meta, text);
    el.messages.append(li);
    if (follow) scrollToBottom();
    return li;
  }

  // The text as text nodes, each mention in a <mark>: shown literally, never parsed as HTML.
  function highlighted(text, ranges) {
    const parts = [];
    let at = 0;
    for (const [start, end] of ranges) {
      if (start > at) parts.push(document.createTextNode(text.slice(at, start)));
      const mark = document.createElement('mark');
      mark.textContent = text.slice(start, end);
      parts.push(mark);
      at = end;
    }
    if (at < text.length || parts.length === 0) parts.push(document.createTextNode(text.slice(at)));
    return parts;
  }

  // "New messages": a line just above `li`, the first message that came while you were away.
  function addNewMarker(li) {
    const marker = document.createElement('li');
    marker.className = 'new-marker';
    marker.textContent = 'New messages';
    li.before(marker);
    return marker;
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

  // ---- Sidebar: our name, people and channels ----

  // `chosen`: the person picked a name (else the hint asks for one). `keepEdits`: leave the
  // field alone while they are typing in it.
  function showName(name, { chosen, keepEdits = false }) {
    if (!keepEdits || document.activeElement !== el.username) el.username.value = name;
    el.nameHint.hidden = chosen;
  }

  function showChannel(channel) {
    el.channelTitle.textContent = '#' + channel;
    el.usersChannel.textContent = '#' + channel;
  }

  // Each person: a dot, the name, "operator" for an operator (a word, not a colour), "muted
  // until" while muted, "(you)", and for an operator the kick, mute and ban buttons. The list
  // is drawn anew on every change: a button that had the focus gives it to its successor.
  function renderUsers() {
    const focus = focusedAction();
    const list = [...Room.users.values()].sort((a, b) =>
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
        if (u.operator) li.append(tag('role', 'operator'));
        const muted = Moderation.mutedUntil(u);
        if (muted) li.append(tag('muted-tag', 'muted until ' + formatUntil(muted)));
        if (Room.isMe(u.id)) {
          li.classList.add('me');
          const you = document.createElement('span');
          you.className = 'muted';
          you.textContent = ' (you)';
          li.append(you);
        }
        const controls = Moderation.controlsFor(u);
        if (controls) li.append(controls);
        return li;
      }),
    );
    el.userCount.textContent = String(Room.users.size);
    el.sidebarToggle.textContent = 'People (' + Room.users.size + ') & channels';
    if (focus) focusPerson(focus.id, focus.action, focus.index);
  }

  function tag(className, text) {
    const t = document.createElement('span');
    t.className = 'tag ' + className;
    t.textContent = text;
    return t;
  }

  // The person's button the focus is on, if it is in the list.
  function focusedAction() {
    const b = document.activeElement;
    if (!b || !el.users.contains(b) || !b.dataset.action) return null;
    const li = b.closest('li');
    return { id: li.dataset.id, action: b.dataset.action, index: [...el.users.children].indexOf(li) };
  }

  // Focus `action`'s button on the person `id`; if they are gone, on the one who took their
  // place in the list (`index`), else the message box: the keyboard is never left nowhere.
  function focusPerson(id, action, index = -1) {
    const selector = 'button[data-action="' + CSS.escape(action) + '"]';
    const row = el.users.querySelector('li[data-id="' + CSS.escape(id) + '"]');
    const buttons = [...el.users.querySelectorAll(selector)];
    const mine = row && row.querySelector(selector);
    const next =
      mine || buttons.find((b) => [...el.users.children].indexOf(b.closest('li')) >= index) || buttons.at(-1);
    if (next) next.focus();
    else if (!el.input.disabled) el.input.focus();
  }

  function renderChannels() {
    const list = Room.channelList.slice();
    // The channel we are in is always listed, even before the server's list arrives.
    if (!list.some((c) => c.name === Room.channel)) {
      list.push({ name: Room.channel, count: Room.users.size });
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
        if (c.name === Room.channel) {
          button.classList.add('current');
          button.setAttribute('aria-current', 'true');
        }
        li.append(button);
        return li;
      }),
    );
  }

  // ---- Times, notices and errors ----

  // An end (a mute's, a ban's) for a person: "14:05" today, "Tue 14:05" within the week, else
  // a date too. Rounded up to the minute: at the time shown, it is over.
  function formatUntil(ts) {
    const when = new Date(Math.ceil(ts / 60000) * 60000);
    const hm = { hour: '2-digit', minute: '2-digit' };
    if (when.toDateString() === new Date().toDateString()) return when.toLocaleTimeString([], hm);
    if (Math.abs(when - Date.now()) < 6 * 86400000) {
      return when.toLocaleString([], { weekday: 'short', ...hm });
    }
    return when.toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' });
  }

  // What stays said until it changes (removed, refused, muted), unlike an error.
  function showNotice(text) {
    el.notice.textContent = text;
    el.notice.hidden = false;
  }
  function hideNotice() {
    el.notice.hidden = true;
    el.notice.textContent = '';
  }


  function showError(text, code) {
    el.error.textContent = text;
    if (code) el.error.dataset.code = code;
    else delete el.error.dataset.code;
    el.error.hidden = false;
    clearTimeout(errorTimer);
    errorTimer = setTimeout(hideError, ERROR_VISIBLE_MS);
  }
  // Hides the error shown; given a `code`, only an error of that code.
  function hideError(code) {
    if (code && el.error.dataset.code !== code) return;
    clearTimeout(errorTimer);
    el.error.hidden = true;
    el.error.textContent = '';
    delete el.error.dataset.code;
  }

  return {
    setStatus,
    setUnread,
    clearMessages,
    addNewMarker,
    addMessage,
    addSystem,
    scrollToBottom,
    colourFor,
    showName,
    showChannel,
    renderUsers,
    renderChannels,
    showError,
    hideError,
    formatUntil,
    showNotice,
    hideNotice,
    focusPerson,
  };
})();
