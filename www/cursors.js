// Cursors: live cursors (the tutorial's step 6): our pointer sent as `state`, the others' drawn.
'use strict';

const Cursors = (() => {
  const INTERVAL_MS = 66; // at most ~15 cursor updates a second (the server rate-limits)

  const layer = document.getElementById('cursors');
  let on = false;
  let pending = null; // latest pointer position not yet sent
  let timer = null;
  let lastSent = 0;

  function setOn(wanted) {
    on = wanted;
    layer.hidden = !on;
    if (on) {
      drawAll();
    } else {
      // Our state is kept by the server and shown to others: clear it so our pointer vanishes.
      clearTimeout(timer);
      timer = null;
      pending = null;
      if (!Room.isMuted()) Connection.send({ type: 'state', state: {} });
      clear();
    }
  }

  // Throttle: send at once if we have been quiet for a while, otherwise send the latest
  // position when the interval is over. Positions are fractions of the viewport, so people
  // with different window sizes see the pointer at the same relative place.
  function onPointerMove(event) {
    if (!on || Room.isMuted()) return; // a muted pointer would only be refused
    pending = {
      x: Math.round((event.clientX / window.innerWidth) * 10000) / 10000,
      y: Math.round((event.clientY / window.innerHeight) * 10000) / 10000,
    };
    if (timer) return;
    const wait = Math.max(0, lastSent + INTERVAL_MS - Date.now());
    timer = setTimeout(flush, wait);
  }
  function flush() {
    timer = null;
    if (!pending) return;
    Connection.send({ type: 'state', state: pending });
    pending = null;
    lastSent = Date.now();
  }

  // Draws (or moves, or removes) one person's pointer from the state Room holds for them.
  function draw(id) {
    if (!on || Room.isMe(id)) return;
    const user = Room.users.get(id);
    const s = user && user.state;
    const valid = s && Number.isFinite(s.x) && Number.isFinite(s.y);
    let c = find(id);
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
      layer.append(c);
    }
    c.style.setProperty('--colour', View.colourFor(id));
    c.style.left = clamp01(s.x) * 100 + '%';
    c.style.top = clamp01(s.y) * 100 + '%';
    c.querySelector('.label').textContent = user.username;
  }

  function drawAll() {
    for (const id of Room.users.keys()) draw(id);
  }

  function remove(id) {
    const c = find(id);
    if (c) c.remove();
  }
  function clear() {
    layer.replaceChildren();
  }

  function find(id) {
    return layer.querySelector('[data-id="' + CSS.escape(id) + '"]');
  }
  function clamp01(v) {
    return Math.min(1, Math.max(0, v));
  }

  return { setOn, onPointerMove, draw, drawAll, remove, clear };
})();
