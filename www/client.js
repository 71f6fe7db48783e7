// Client: starts the chat: wires what the person does (forms, buttons, pointer) to the parts, then connects.
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
    sendForm: $('send-form'),
    input: $('input'),
  };

  // Enter in the input submits the form; focus stays in the input for the next line.
  el.sendForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const text = el.input.value.trim();
    if (!text) return;
    if (!Connection.send({ type: 'message', text })) {
      View.showError('Not connected: your message was not sent (it is still in the box).');
      return;
    }
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
    if (Connection.isConnected()) {
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

  el.sidebarToggle.addEventListener('click', () => {
    const open = !document.body.classList.contains('sidebar-open');
    document.body.classList.toggle('sidebar-open', open);
    el.sidebarToggle.setAttribute('aria-expanded', String(open));
  });

  el.cursorsToggle.addEventListener('change', () => Cursors.setOn(el.cursorsToggle.checked));
  document.addEventListener('pointermove', Cursors.onPointerMove, { passive: true });

  // ---- Start ----

  el.server.value = Connection.serverUrl();
  View.showName(Room.wantedName, { chosen: Boolean(Room.wantedName) });
  if (Settings.cursors) el.cursorsToggle.checked = true;
  Cursors.setOn(el.cursorsToggle.checked);
  View.renderUsers();
  View.renderChannels();
  Connection.connect();
})();
