// Client: starts the chat: wires what the person does to the parts, asks a name first, connects.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const el = {
    serverForm: $('server-form'),
    server: $('server'),
    sidebarToggle: $('sidebar-toggle'),
    nameForm: $('name-form'),
    username: $('username'),
    joinForm: $('join-form'),
    channelInput: $('channel-input'),
    channels: $('channels'),
    cursorsToggle: $('cursors-toggle'),
    notifyToggle: $('notify-toggle'),
    sendForm: $('send-form'),
    input: $('input'),
    nameDialog: $('name-dialog'),
    nameDialogForm: $('name-dialog-form'),
    nameInput: $('name-input'),
    nameDialogHint: document.querySelector('#name-dialog .hint'),
  };

  // ---- A name first, then the connection ----

  // First visit (no ?username=, nothing remembered), or the remembered name is in use in
  // another window of this browser: ask before connecting, so the room never sees a guest who
  // renames a second later. `why` replaces the dialog's hint (as text, never HTML).
  function askName(why) {
    if (why) el.nameDialogHint.textContent = why;
    View.setStatus('Choose a name to join', 'waiting');
    el.nameDialog.showModal(); // focuses the name field
  }

  el.nameDialogForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const name = el.nameInput.value.trim();
    if (!name) {
      el.nameInput.focus();
      return;
    }
    el.nameDialog.close();
    joinAs(name);
  });

  // Escape closes the dialog: the name field in the sidebar still asks for a name, and
  // submitting it connects.
  el.nameDialog.addEventListener('close', () => {
    if (Connection.hasStarted()) return;
    openSidebar(true);
    el.username.focus();
  });

  function joinAs(name) {
    Room.wantedName = name; // remembered once the server's welcome confirms it
    View.showName(name, { chosen: true });
    Connection.connect();
    el.input.focus();
  }

  // Enter in the input submits the form; focus stays in the input for the next line.
  el.sendForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const text = el.input.value.trim();
    if (!text) return;
    if (!Connection.send({ type: 'message', text })) {
      View.showError('Not connected: your message was not sent (it is still in the box).');
      return;
    }
    // Cleared now, but kept until the message comes back: a refusal puts it back in the box.
    Room.unconfirmed = Room.unconfirmed.slice(-19).concat({ text, at: Date.now() });
    el.input.value = '';
    Typing.stop();
    el.input.focus();
  });
  el.input.addEventListener('input', Typing.onInput);

  el.nameForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const name = el.username.value.trim();
    if (!name) return;
    if (Room.me && name === Room.me.username) return;
    if (!Connection.hasStarted()) {
      joinAs(name); // the first name, chosen here instead of in the dialog
    } else if (Connection.isConnected()) {
      Connection.send({ type: 'username', username: name }); // confirmed by a `renamed` frame
    } else {
      // Offline: use it in the query of the next connection.
      Room.wantedName = name;
      Settings.saveName(name);
    }
  });

  function joinChannel(name) {
    const channel = String(name).trim().toLowerCase().replace(/^#/, '');
    if (!channel) return;
    if (channel === Room.channel) return;
    if (!Connection.send({ type: 'join', channel })) {
      View.showError('Not connected: cannot join #' + channel + ' right now.');
    }
    // The server answers with a welcome for the new channel (or an invalid_channel error).
  }

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
    const url = Settings.normaliseServerUrl(el.server.value);
    if (!url) {
      View.showError('That is not a server address. Try ws://localhost:1337/');
      return;
    }
    el.server.value = url;
    Connection.changeServer(url);
  });

  // On a phone the sidebar folds behind a button (see style.css).
  function openSidebar(open) {
    document.body.classList.toggle('sidebar-open', open);
    el.sidebarToggle.setAttribute('aria-expanded', String(open));
  }
  el.sidebarToggle.addEventListener('click', () => {
    openSidebar(!document.body.classList.contains('sidebar-open'));
  });

  el.cursorsToggle.addEventListener('change', () => Cursors.setOn(el.cursorsToggle.checked));
  document.addEventListener('pointermove', Cursors.onPointerMove, { passive: true });

  // The browser's permission is asked for here, on the click, never on load.
  el.notifyToggle.addEventListener('change', () => Attention.setNotify(el.notifyToggle.checked));
  document.addEventListener('visibilitychange', Attention.onVisibilityChange);

  // ---- Start ----

  el.server.value = Connection.serverUrl();
  View.showName(Room.wantedName, { chosen: Boolean(Room.wantedName) });
  if (Settings.cursors) el.cursorsToggle.checked = true;
  Cursors.setOn(el.cursorsToggle.checked);
  Attention.initNotifications();
  View.renderUsers();
  View.renderChannels();
  Access.showOperator();
  // While connected, this window holds its name against the browser's other windows.
  setInterval(() => {
    if (Room.me && Connection.isConnected()) Settings.markNameInUse(Room.me.username);
  }, 5000);
  addEventListener('pagehide', Settings.forgetNameInUse);
  const remembered = Room.wantedName && !Settings.nameFromQuery;
  if (remembered && Settings.nameInUseElsewhere(Room.wantedName)) {
    const taken = Room.wantedName;
    Room.wantedName = '';
    View.showName('', { chosen: false });
    askName(`“${taken}” is in use in another window of this browser: choose a name for this one.`);
  } else if (Room.wantedName) Connection.connect();
  else askName();
})();
