// Secrets: the room code and the operator token, from the page's own address or typed, kept
// for this tab only and for one server only.
//
// An invite link carries them in its fragment, `client.html#code=CODE&operator=TOKEN` (either
// alone, in any order; a value with `&`, `#`, `%` or a space in it is written percent-encoded,
// `%26`, `%23`, `%25`, `%20`). A browser never sends the fragment to any server, and this page
// sends the secrets nowhere but in a `hello` frame to the server they were given for. Once
// read they leave the address bar (a screenshot or a shared screen must not show them) and go
// to sessionStorage: this tab keeps them across a reload or a reconnect after a network blip,
// and no other tab, window or later visit sees them.
'use strict';

const Secrets = (() => {
  const STORAGE = 'cyberchat.secrets.'; // + the server's address: a code goes to its own server
  const KINDS = ['code', 'operator'];
  const memory = new Map(); // where sessionStorage is unavailable: this page's life only

  function key(server, kind) {
    return STORAGE + kind + ' ' + server;
  }

  function get(server, kind) {
    try {
      return sessionStorage.getItem(key(server, kind)) || '';
    } catch (e) {
      return memory.get(key(server, kind)) || '';
    }
  }

  function set(server, kind, value) {
    memory.set(key(server, kind), value);
    try {
      sessionStorage.setItem(key(server, kind), value);
    } catch (e) {
      /* kept in memory only */
    }
  }

  function forget(server, kind) {
    memory.delete(key(server, kind));
    try {
      sessionStorage.removeItem(key(server, kind));
    } catch (e) {
      /* never mind */
    }
  }

  // `+` stays a plus (codes may hold one), unlike URLSearchParams, which reads it as a space.
  function decode(text) {
    try {
      return decodeURIComponent(text);
    } catch (e) {
      return text; // a lone `%`: taken as written
    }
  }

  // Takes `code=` and `operator=` out of the fragment, keeps them for `server`, and puts the
  // rest of the fragment (anything else it held) back in the address bar.
  function takeFromAddress(server) {
    const hash = location.hash.replace(/^#/, '');
    if (!hash) return;
    const kept = [];
    let found = false;
    for (const part of hash.split('&')) {
      const at = part.indexOf('=');
      const name = at < 0 ? part : part.slice(0, at);
      if (!KINDS.includes(name)) {
        if (part) kept.push(part);
        continue;
      }
      found = true;
      const value = decode(part.slice(at + 1)).trim();
      if (at > 0 && value) set(server, name, value);
    }
    if (!found) return;
    const clean = location.pathname + location.search + (kept.length ? '#' + kept.join('&') : '');
    try {
      history.replaceState(history.state, '', clean);
    } catch (e) {
      location.hash = kept.join('&'); // leaves a bare `#` at worst, never the secret
    }
  }

  takeFromAddress(Settings.serverUrl);

  return {
    code: (server) => get(server, 'code'),
    token: (server) => get(server, 'operator'),
    setCode: (server, code) => set(server, 'code', code),
    setToken: (server, token) => set(server, 'operator', token),
    forgetCode: (server) => forget(server, 'code'),
    forgetToken: (server) => forget(server, 'operator'),
  };
})();
