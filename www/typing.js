// Typing: the "Alex is typing…" line for the others, and telling them when we start and stop.
'use strict';

const Typing = (() => {
  const IDLE_MS = 3000; // we say "stopped typing" after 3 s without a keystroke
  const EXPIRE_MS = 5000; // forget someone's "typing" after 5 s without news

  const line = document.getElementById('typing');
  const input = document.getElementById('input');
  const people = new Map(); // id -> { username, timer }
  let amTyping = false;
  let idleTimer = null;

  // ---- The others ----

  function set(user, typing) {
    if (!user || Room.isMine(user)) return;
    const old = people.get(user.id);
    if (old) clearTimeout(old.timer);
    if (typing) {
      // Nobody tells us if their browser vanished: forget them after a few quiet seconds.
      const timer = setTimeout(() => set(user, false), EXPIRE_MS);
      people.set(user.id, { username: user.username, timer });
    } else {
      people.delete(user.id);
    }
    render();
  }

  function renamed(user) {
    const typing = people.get(user.id);
    if (typing) typing.username = user.username;
    render();
  }

  // A new connection or channel: nobody is typing yet, and we have said nothing.
  function reset() {
    amTyping = false;
    for (const t of people.values()) clearTimeout(t.timer);
    people.clear();
    render();
  }

  function render() {
    const names = [...people.values()].map((t) => t.username);
    let text = '';
    if (names.length === 1) text = names[0] + ' is typing…';
    else if (names.length === 2) text = names[0] + ' and ' + names[1] + ' are typing…';
    else if (names.length > 2) text = names.length + ' people are typing…';
    line.textContent = text;
  }

  // ---- Us ----

  // Tell the others when we start typing, and when we stop (idle, cleared or sent).
  function onInput() {
    const hasText = input.value.trim() !== '';
    clearTimeout(idleTimer);
    if (hasText) {
      if (!amTyping && Connection.send({ type: 'typing', typing: true })) amTyping = true;
      idleTimer = setTimeout(stop, IDLE_MS);
    } else {
      stop();
    }
  }
  // Muted, we say nothing, not even that we stopped: the server would refuse it.
  function stop() {
    clearTimeout(idleTimer);
    if (amTyping && !Room.isMuted()) Connection.send({ type: 'typing', typing: false });
    amTyping = false;
  }

  return { set, renamed, reset, onInput, stop };
})();
