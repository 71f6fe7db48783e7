// Room: what the server has told us: who we are, our channel, who is in it, the channel list.
'use strict';

const Room = {
  // The name the person chose (from ?username=…, localStorage or the name field). It only
  // changes when they pick another one, never to a guest name the server handed out.
  wantedName: Settings.name,
  channel: Settings.channel,
  me: null, // { id, username, operator? } from the last welcome
  myIds: new Set(), // every id we had in this page: own messages stay "own" after a reconnect
  users: new Map(), // id -> { id, username, operator?, state, mutedUntil? } in our channel
  channelList: [], // [{ name, count }] from the last `channels` frame
  mutedUntil: 0, // an operator muted us until this `ts` (0: never, or lifted)
  unconfirmed: [], // { text, at } of messages we sent that have not come back yet, oldest first

  // The name to connect with. Someone who never chose one keeps the guest name they had, so
  // after a reconnect we are back as who we were.
  nameForQuery() {
    return Room.wantedName || (Room.me && Room.me.username) || '';
  },

  isMuted() {
    return Room.mutedUntil > Date.now();
  },

  isMe(id) {
    return Boolean(Room.me && id === Room.me.id);
  },

  // Also true for a message this page sent on an earlier connection.
  isMine(user) {
    return Boolean(user && Room.myIds.has(user.id));
  },

  sameName(a, b) {
    return String(a).toLowerCase() === String(b).toLowerCase();
  },

  displayName(user) {
    return (user && user.username) || 'someone';
  },
};
