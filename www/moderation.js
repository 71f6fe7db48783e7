// Moderation: an operator's kick, mute and ban on each person in the list, asked in a dialog
// (minutes for a mute or a ban, a reason for a kick or a ban, a confirmation for a ban), and
// who is muted until when, ourselves included.
'use strict';

const Moderation = (() => {
  // The server's bounds (it refuses anything else with `bad_request`).
  const ACTIONS = {
    kick: {
      verb: 'Kick',
      reason: true,
      hint: 'They are disconnected at once and shown the reason. They may come back.',
    },
    mute: {
      verb: 'Mute',
      minutes: { min: 0, max: 1440, start: 10 },
      hint: 'They stay and read, but cannot write, type or share a cursor until then. ' +
        'At most 1440 (a day); 0 lifts a mute.',
    },
    ban: {
      verb: 'Ban',
      minutes: { min: 1, max: 10080, start: 60 },
      reason: true,
      confirm: true,
      hint: 'They are removed, and every new connection from their network address is ' +
        'refused until then: behind a shared address (a school, a café) that is everyone ' +
        'there. At most 10080 (a week).',
    },
  };
  const MINUTE_MS = 60000;

  const $ = (id) => document.getElementById(id);
  const el = {
    users: $('users'),
    dialog: $('moderate-dialog'),
    form: $('moderate-form'),
    title: $('moderate-title'),
    ask: $('moderate-ask'),
    minutesRow: $('moderate-minutes-row'),
    minutes: $('moderate-minutes'),
    reasonRow: $('moderate-reason-row'),
    reason: $('moderate-reason'),
    hint: $('moderate-hint'),
    go: $('moderate-go'),
    cancel: $('moderate-cancel'),
    confirm: $('moderate-confirm'),
    confirmText: $('moderate-confirm-text'),
    yes: $('moderate-yes'),
    back: $('moderate-back'),
    input: $('input'),
    send: document.querySelector('#send-form button[type="submit"]'),
  };
  const placeholder = el.input.placeholder;

  let target = null; // { id, username, action } while the dialog is open
  let expiry = null; // the timer that redraws when the next mute runs out

  // ---- The controls, in the people list ----

  // Kick, mute and ban buttons for `user`, or null: only an operator has them, and only on
  // people who are not operators (the server refuses those with `forbidden`).
  function controlsFor(user) {
    if (!Room.me || !Room.me.operator || Room.isMe(user.id) || user.operator) return null;
    const box = document.createElement('span');
    box.className = 'actions';
    for (const [action, a] of Object.entries(ACTIONS)) {
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'action';
      button.dataset.action = action;
      button.textContent = a.verb;
      button.setAttribute('aria-label', a.verb + ' ' + user.username); // "Kick Bob"
      box.append(button);
    }
    return box;
  }

  // One listener for the whole list: its buttons are re-created with it.
  el.users.addEventListener('click', (event) => {
    const button = event.target.closest('button.action');
    if (!button) return;
    const user = Room.users.get(button.closest('li').dataset.id);
    if (user) open(button.dataset.action, user);
  });

  // ---- The dialog ----

  function open(action, user) {
    const a = ACTIONS[action];
    target = { id: user.id, username: user.username, action };
    el.title.textContent = a.verb + ' ' + user.username;
    el.hint.textContent = a.hint;
    el.minutesRow.hidden = !a.minutes;
    el.minutes.disabled = !a.minutes;
    if (a.minutes) {
      el.minutes.min = String(a.minutes.min);
      el.minutes.max = String(a.minutes.max);
      el.minutes.value = String(a.minutes.start);
    }
    el.reasonRow.hidden = !a.reason;
    el.reason.disabled = !a.reason;
    el.reason.value = '';
    el.go.textContent = a.confirm ? a.verb + '…' : a.verb;
    step('ask');
    el.dialog.showModal();
    (a.minutes ? el.minutes : el.reason).focus();
    if (a.minutes) el.minutes.select();
  }

  function step(which) {
    el.ask.hidden = which !== 'ask';
    el.confirm.hidden = which !== 'confirm';
  }

  el.form.addEventListener('submit', (event) => {
    event.preventDefault();
    if (!target || !el.form.reportValidity()) return;
    const a = ACTIONS[target.action];
    if (!a.confirm) {
      act();
      return;
    }
    // A ban is asked twice: the safe answer has the focus, so Enter twice bans nobody.
    const minutes = Number(el.minutes.value);
    el.confirmText.textContent =
      'Ban ' + target.username + ' for ' + minutes + ' minute' + (minutes === 1 ? '' : 's') +
      ', until ' + View.formatUntil(Date.now() + minutes * MINUTE_MS) + '? Every new ' +
      'connection from their network address is refused until then.';
    el.yes.textContent = 'Yes, ban ' + target.username;
    step('confirm');
    el.back.focus();
  });

  el.yes.addEventListener('click', act);
  el.back.addEventListener('click', () => {
    step('ask');
    el.minutes.focus();
  });
  el.cancel.addEventListener('click', () => el.dialog.close());
  el.dialog.addEventListener('close', () => {
    const was = target;
    target = null;
    if (was) View.focusPerson(was.id, was.action);
  });

  function act() {
    if (!target) return;
    const frame = { type: target.action, user: target.id };
    if (!el.minutes.disabled) frame.minutes = Number(el.minutes.value);
    const reason = el.reason.disabled ? '' : el.reason.value.trim();
    if (reason) frame.reason = reason;
    if (!Connection.send(frame)) View.showError('Not connected: nothing was done.');
    // The server answers with `left` (kicked: true), `muted`, or an error.
    el.dialog.close();
  }

  // ---- Who is muted ----

  // `muted`: someone in our channel, maybe us, was muted until `until` (0: the mute is lifted).
  function onMuted(f) {
    if (!f.user) return;
    const until = Number(f.until) || 0;
    const u = Room.users.get(f.user.id);
    if (u) u.mutedUntil = until;
    const me = Room.isMe(f.user.id);
    const name = Room.displayName(f.user);
    if (until) {
      const when = View.formatUntil(until);
      View.addSystem(
        me ? 'An operator muted you until ' + when : name + ' was muted by an operator until ' + when,
      );
    } else {
      View.addSystem(me ? 'An operator lifted your mute' : name + ' may speak again');
    }
    if (me) muteMe(until);
    View.renderUsers();
    watchExpiry();
  }

  // Until when `user` is muted, if they are now.
  function mutedUntil(user) {
    const until = (user && user.mutedUntil) || 0;
    return until > Date.now() ? until : 0;
  }

  // Our own mute: the input says until when and takes nothing, and nothing that the server
  // would refuse (typing, the cursor) is sent meanwhile.
  function muteMe(until) {
    Room.mutedUntil = until;
    const muted = Room.isMuted();
    el.input.disabled = muted;
    el.send.disabled = muted;
    if (muted) {
      const when = View.formatUntil(until);
      el.input.placeholder = 'An operator muted you until ' + when;
      View.showNotice(
        'An operator muted you until ' + when + ': until then your messages, typing and cursor are not sent.',
      );
      Typing.stop();
    } else {
      el.input.placeholder = placeholder;
      View.hideNotice();
    }
  }

  // Mutes run out by themselves: redraw the list (and free our input) when the next one does.
  function watchExpiry() {
    clearTimeout(expiry);
    const now = Date.now();
    const ends = [...Room.users.values()].map(mutedUntil).concat(Room.isMuted() ? [Room.mutedUntil] : []);
    const next = Math.min(...ends.filter((t) => t > now));
    if (!Number.isFinite(next)) return;
    expiry = setTimeout(() => {
      if (Room.mutedUntil && !Room.isMuted()) muteMe(0);
      View.renderUsers();
      watchExpiry();
    }, Math.min(next - now + 50, 2 ** 31 - 1));
  }

  // A new connection: we know nobody's mute until the server says (a muted address is told
  // again, with a `muted` frame, right after its welcome).
  function reset() {
    if (el.dialog.open) el.dialog.close();
    if (Room.mutedUntil) muteMe(0);
    clearTimeout(expiry);
  }

  return { controlsFor, onMuted, mutedUntil, reset };
})();
