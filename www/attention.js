// Attention: for when you look away: unread count in the title, @mentions, notifications, marker.
'use strict';

const Attention = (() => {
  const STORAGE_NOTIFY = 'cyberchat.notify';
  // A mention is "@name" that is not part of a longer word: "@Ann," is one, "@Anna" and
  // "x@ann" are not.
  const WORD_CHAR = '[\\p{L}\\p{M}\\p{N}_]';

  const notifyToggle = document.getElementById('notify-toggle');
  const notifyHint = document.getElementById('notify-hint');
  const canNotify = 'Notification' in window && window.isSecureContext;

  let unread = 0; // messages from others that arrived while the tab was hidden
  let awayStarted = false; // the tab was hidden and no message has arrived since
  let marker = null; // the "New messages" line in the list, once placed
  let notifyOn = false;

  // Read the state on each call (not `document.hidden` cached once): the tests simulate it.
  function isHidden() {
    return document.visibilityState === 'hidden';
  }

  // The [start, end) ranges of each mention of `name` in `text`, compared case-insensitively.
  function findMentions(text, name) {
    const ranges = [];
    if (!name) return ranges;
    const escaped = String(name).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const re = new RegExp('(?<!' + WORD_CHAR + ')@' + escaped + '(?!' + WORD_CHAR + ')', 'giu');
    for (const m of String(text).matchAll(re)) ranges.push([m.index, m.index + m[0].length]);
    return ranges;
  }

  // A message from the server as it arrives (never one from history), already on screen as `li`.
  function onLiveMessage(m, li, mentionsMe) {
    if (Room.isMine(m.user)) return;
    if (isHidden()) {
      if (awayStarted || !marker || !marker.isConnected) {
        if (marker) marker.remove();
        marker = View.addNewMarker(li);
        awayStarted = false;
      }
      unread += 1;
      View.setUnread(unread);
    }
    if (mentionsMe && notifyOn && (isHidden() || !document.hasFocus())) notify(m);
  }

  // Hidden: count from zero and mark the next message. Back: clear the count, and bring the
  // marker into view if the list scrolled past it meanwhile. The marker stays until the next
  // time the tab is hidden and a message arrives.
  function onVisibilityChange() {
    if (isHidden()) {
      awayStarted = true;
      return;
    }
    awayStarted = false;
    unread = 0;
    View.setUnread(0);
    if (marker && marker.isConnected) marker.scrollIntoView({ block: 'nearest' });
  }

  // ---- Desktop notifications for mentions, only ever asked for on a click ----

  function initNotifications() {
    if (!canNotify) {
      notifyToggle.disabled = true;
      notifyHint.textContent = 'This browser cannot show notifications for this page.';
      return;
    }
    // On again only if it was on last time and the browser still allows it: never ask on load.
    if (loadNotifyChoice() && Notification.permission === 'granted') {
      notifyOn = true;
      notifyToggle.checked = true;
    }
  }

  // The person ticked or unticked the box: the one place that may ask the browser.
  async function setNotify(wanted) {
    if (!wanted || !canNotify) {
      notifyOn = false;
      saveNotifyChoice(false);
      return;
    }
    let permission = Notification.permission;
    if (permission === 'default') {
      try {
        permission = await Notification.requestPermission();
      } catch (e) {
        permission = 'denied';
      }
    }
    notifyOn = permission === 'granted';
    notifyToggle.checked = notifyOn;
    saveNotifyChoice(notifyOn);
    notifyHint.textContent = notifyOn
      ? 'You will be notified when someone writes @' + (Room.nameForQuery() || 'yourname') + '.'
      : 'Notifications are blocked for this page: allow them in the browser’s site settings.';
  }

  function notify(m) {
    try {
      // Title and body are plain text for the browser: nothing in them is parsed as HTML.
      const n = new Notification(Room.displayName(m.user) + ' mentioned you in #' + Room.channel, {
        body: String(m.text),
        tag: 'cyberchat-' + m.id,
      });
      n.addEventListener('click', () => {
        window.focus();
        n.close();
      });
    } catch (e) {
      // Some browsers (Chrome on Android) only show notifications from a service worker.
    }
  }

  function loadNotifyChoice() {
    try {
      return localStorage.getItem(STORAGE_NOTIFY) === '1';
    } catch (e) {
      return false;
    }
  }
  function saveNotifyChoice(on) {
    try {
      localStorage.setItem(STORAGE_NOTIFY, on ? '1' : '0');
    } catch (e) {
      /* not remembered, never mind */
    }
  }

  return { findMentions, onLiveMessage, onVisibilityChange, initNotifications, setNotify };
})();
