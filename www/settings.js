// Settings: what the client starts from: the page's query, the remembered name, the server address.
//
// The browser client is a few classic scripts (not modules: Chrome refuses modules from file://
// pages) that client.html loads in order: settings, room, view, typing, cursors, attention, frames,
// connection, client. Each defines one object (Settings, Room, View, …) as a global; they call
// one another only once client.js, the last, has started the chat, so every one is defined by
// then. The wire format is in docs/reference.md: every frame is one JSON object with a `type`.
'use strict';

const Settings = (() => {
  const STORAGE_NAME = 'cyberchat.username';
  const params = new URLSearchParams(location.search);

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

  // Every window of this browser shares the remembered name. A window connected under a name
  // says so here, refreshed every few seconds and taken back when the window closes, so that
  // a second window asks for a name of its own instead of connecting as the same person (whom
  // the server would turn into a guest, since the name is taken).
  const IN_USE = 'cyberchat.inUse.';
  const IN_USE_FOR = 15000; // a claim not refreshed for this long is a window that crashed
  const windowId = Math.random().toString(36).slice(2);

  function markNameInUse(name) {
    try {
      localStorage.setItem(IN_USE + windowId, JSON.stringify({ name, at: Date.now() }));
    } catch (e) {
      /* not shared, never mind */
    }
  }
  function forgetNameInUse() {
    try {
      localStorage.removeItem(IN_USE + windowId);
    } catch (e) {
      /* never mind */
    }
  }
  function nameInUseElsewhere(name) {
    try {
      for (let i = 0; i < localStorage.length; i++) {
        const key = localStorage.key(i);
        if (!key.startsWith(IN_USE) || key === IN_USE + windowId) continue;
        const claim = JSON.parse(localStorage.getItem(key));
        const fresh = claim && Date.now() - claim.at < IN_USE_FOR;
        if (fresh && String(claim.name).toLowerCase() === name.toLowerCase()) return true;
      }
    } catch (e) {
      /* nothing to go on: connect as usual */
    }
    return false;
  }

  return {
    serverUrl: initialServerUrl(),
    // ?username=… wins over the name remembered from an earlier visit.
    name: (params.get('username') || loadName() || '').trim(),
    nameFromQuery: Boolean((params.get('username') || '').trim()),
    channel: (params.get('channel') || 'general').trim().toLowerCase(),
    cursors: params.get('cursors') === '1',
    normaliseServerUrl,
    saveName,
    markNameInUse,
    forgetNameInUse,
    nameInUseElsewhere,
  };
})();
