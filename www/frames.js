// Frames: what each frame from the server does, to Room, the page, typing, cursors and attention.
'use strict';

const Frames = (() => {
  const RESYNCED = 'Some messages did not reach you live: the recent messages are shown again.';
  // A refusal this long after a message is not taken to be of it.
  const UNCONFIRMED_FOR_MS = 10000;

  function handle(f) {
    switch (f.type) {
      case 'welcome':
        onWelcome(f);
        break;
      case 'message':
        if (f.channel === undefined || f.channel === Room.channel) {
          Typing.set(f.user, false);
          const mentions = mentionsOfMe(f);
          // Always scroll to what we just said.
          const li = View.addMessage(f, Room.isMine(f.user), mentions);
          if (li) Attention.onLiveMessage(f, li, mentions.length > 0);
          // Ours went through: an `unavailable` ("not sent") error shown is no longer true.
          if (Room.isMine(f.user)) {
            View.hideError('unavailable');
            confirmed(f.text);
          }
        }
        break;
      case 'joined':
        if (f.user) Room.users.set(f.user.id, { ...f.user, state: {} });
        View.renderUsers();
        updateChannelCount(f.channel, f.count);
        View.addSystem(f.text || Room.displayName(f.user) + ' has joined the chat');
        break;
      case 'left':
        if (f.user) {
          reclaimName(f.user);
          Room.users.delete(f.user.id);
          Typing.set(f.user, false);
          Cursors.remove(f.user.id);
        }
        View.renderUsers();
        updateChannelCount(f.channel, f.count);
        View.addSystem(
          f.kicked === true
            ? Room.displayName(f.user) + ' was removed by an operator'
            : f.text || Room.displayName(f.user) + ' has left the chat',
        );
        break;
      case 'renamed':
        onRenamed(f);
        break;
      case 'typing':
        Typing.set(f.user, f.typing === true);
        break;
      case 'state':
        if (f.user && Room.users.has(f.user.id)) {
          Room.users.get(f.user.id).state = f.state || {};
          Cursors.draw(f.user.id);
        }
        break;
      case 'channels':
        Room.channelList = Array.isArray(f.channels) ? f.channels : [];
        View.renderChannels();
        break;
      case 'error':
        if (!Access.onError(f)) {
          const text = f.message || f.code || 'Something went wrong';
          View.showError(refused(f.code) ? text + ' Your message is back in the box.' : text, f.code);
        }
        break;
      // Who may enter, and operators.
      case 'locked':
        Access.onLocked();
        break;
      case 'operator':
        onOperator(f);
        break;
      case 'muted':
        Moderation.onMuted(f);
        break;
      case 'kicked':
        Access.onKicked(f);
        break;
      default:
        // Unknown frame types are ignored: the protocol may grow new ones.
        break;
    }
  }

  // A refusal that may be of a message we sent: if exactly one is not back yet, it goes back
  // into the box (when the box is empty), so that it need not be typed again. Returns whether
  // one is there. An error does not say which frame it refuses: with two or more not back
  // (several servers answer a refusal before an earlier message comes back), any of them may
  // be the one, so none is put back. One refused for an earlier `typing` frame puts back a
  // message that then arrives after all, and `confirmed` takes it out of the box.
  let restored = null;
  function refused(code) {
    if (code !== 'rate_limited' && code !== 'unavailable') return false;
    const input = document.getElementById('input');
    if (!input) return false;
    const recent = Date.now() - UNCONFIRMED_FOR_MS;
    Room.unconfirmed = Room.unconfirmed.filter((sent) => sent.at >= recent);
    if (input.value === '' && Room.unconfirmed.length === 1) {
      restored = Room.unconfirmed.shift().text;
      input.value = restored;
    }
    return restored !== null && input.value === restored; // (back in the box already)
  }

  // Our message with `text` came back: it waits no longer, and leaves the box if a refusal
  // had put it back there (and nobody has edited it since).
  function confirmed(text) {
    const at = Room.unconfirmed.findIndex((sent) => sent.text === text);
    if (at >= 0) Room.unconfirmed.splice(at, 1);
    const input = document.getElementById('input');
    if (text === restored && input && input.value === restored) input.value = '';
    if (text === restored) restored = null;
  }

  // The first frame on every connection, and again after each join: who we are, where,
  // with whom, and the channel's recent history.
  function onWelcome(f) {
    const first = !Connection.isConnected(); // the first of this socket, not after a join
    Connection.welcomed();
    if (first) Moderation.reset();
    // A new connection or another channel: what was not back yet is not to be put back here.
    Room.unconfirmed = [];
    restored = null;

    Room.me = f.user;
    Room.myIds.add(f.user.id);
    Room.channel = f.channel;
    // Remember the name only if it is the one we asked for, not a guest name the server
    // picked because ours was taken (the `error` frame after this welcome says why).
    if (Room.wantedName && Room.sameName(f.user.username, Room.wantedName)) {
      Room.wantedName = f.user.username;
      Settings.saveName(f.user.username);
    }
    Settings.markNameInUse(f.user.username);
    View.showName(f.user.username, { chosen: Boolean(Room.wantedName), keepEdits: true });

    Room.users = new Map();
    for (const u of f.users || []) Room.users.set(u.id, { ...u, state: u.state || {} });
    Typing.reset();
    Cursors.clear();
    Cursors.drawAll();

    View.clearMessages();
    for (const m of f.history || []) View.addMessage(m, false, mentionsOfMe(m));
    // A welcome again, in the same channel, from a server that could not deliver some
    // messages live (it fell too far behind the other servers): the history above holds them.
    if (f.resync === true) View.addSystem(RESYNCED);
    View.scrollToBottom();

    View.showChannel(f.channel);
    View.renderUsers();
    View.renderChannels();
    Access.onWelcome(f, first);

    // The channel list with counts is only sent on request (or when channels come and go).
    Connection.send({ type: 'channels' });
  }

  function onRenamed(f) {
    if (!f.user) return;
    const u = Room.users.get(f.user.id);
    if (u) u.username = f.user.username;
    else Room.users.set(f.user.id, { ...f.user, state: {} });
    if (Room.isMe(f.user.id)) {
      Room.me.username = f.user.username;
      Room.wantedName = f.user.username;
      Settings.saveName(f.user.username);
      Settings.markNameInUse(f.user.username);
      View.showName(f.user.username, { chosen: true });
      View.hideError();
    }
    View.renderUsers();
    Typing.renamed(f.user);
    Cursors.draw(f.user.id);
    View.addSystem(f.text || f.old + ' is now known as ' + f.user.username);
  }

  // `operator`: someone in our channel, maybe us, holds the operator token now.
  function onOperator(f) {
    if (!f.user) return;
    const u = Room.users.get(f.user.id);
    if (u) u.operator = true;
    if (Room.isMe(f.user.id)) {
      Room.me.operator = true;
      Access.showOperator();
      View.addSystem('You are an operator now: each person in the list has Kick, Mute and Ban');
    } else {
      View.addSystem(Room.displayName(f.user) + ' is an operator now');
    }
    View.renderUsers();
  }

  // Where a message from someone else says "@" and our name (our own never count).
  function mentionsOfMe(m) {
    if (!Room.me || Room.isMine(m.user)) return [];
    return Attention.findMentions(m.text, Room.me.username);
  }

  // After a network hiccup the server may still hold our old connection, and with it our
  // name, so we came back as a guest. When that old connection leaves, take the name back.
  function reclaimName(leaver) {
    if (!Room.me || !Room.wantedName) return;
    if (Room.sameName(Room.me.username, Room.wantedName)) return;
    if (Room.sameName(leaver.username, Room.wantedName)) {
      Connection.send({ type: 'username', username: Room.wantedName });
    }
  }

  // joined/left carry the channel's new head count: keep our channel's number fresh without
  // asking the server for the whole list again.
  function updateChannelCount(channel, count) {
    if (typeof count !== 'number') return;
    const c = Room.channelList.find((x) => x.name === (channel || Room.channel));
    if (c) c.count = count;
    View.renderChannels();
  }

  return { handle };
})();
