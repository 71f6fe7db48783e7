// Access: who may enter: the room code (asked for, or from the invite link), the operator
// token, and what a person removed by an operator (4001) or refused by the server (4003) sees.
//
// The server says `locked` before anything else when it has a room code; the page answers with
// a `hello` holding the code (and the operator token, if it has one), and only then is it in.
// After 4001 or 4003 the page never reconnects by itself: the person presses Connect.
'use strict';

const Access = (() => {
  const REMOVED = 4001; // an operator's kick or ban
  const REFUSED = 4003; // wrong codes, no code in time, guessing from this address
  const BANS = 'cyberchat.bannedUntil'; // { serverUrl: ts }: this browser was banned there

  const $ = (id) => document.getElementById(id);
  const el = {
    codeDialog: $('code-dialog'),
    codeForm: $('code-dialog-form'),
    codeInput: $('code-input'),
    codeError: $('code-error'),
    operatorPanel: $('operator-panel'),
    operatorForm: $('operator-form'),
    operatorInput: $('operator-token'),
    operatorError: $('operator-error'),
    operatorYes: $('operator-yes'),
  };

  // What happened on the current socket.
  let locked = false; // the server said `locked` and has not let us in yet
  let sentCode = ''; // the code of our last `hello` on this socket, until it is answered
  let codesSent = 0; // codes sent on this socket, right or wrong
  let sentToken = false; // the token went in a `hello` on this socket
  let removal = null; // the `kicked` frame, until its close arrives
  let typed = null; // { server, code } typed while no socket was open: for that server's `locked`

  const server = () => Connection.serverUrl();

  // ---- The socket's life ----

  function onConnecting() {
    locked = false;
    sentCode = '';
    codesSent = 0;
    sentToken = false;
    removal = null;
  }

  // The server has a room code: give the one we hold, or ask for one.
  function onLocked() {
    locked = true;
    View.setStatus('Room code needed', 'waiting');
    const code = typed && typed.server === server() ? typed.code : Secrets.code(server());
    typed = null;
    if (code) sendCode(code);
    else askCode();
  }

  function sendCode(code) {
    const hello = { type: 'hello', code };
    const token = Secrets.token(server());
    if (token) hello.operator = token;
    if (!Connection.sendHello(hello)) return false;
    sentCode = code;
    codesSent += 1;
    sentToken = Boolean(token);
    View.setStatus('Checking the room code…', 'connecting');
    return true;
  }

  // Every welcome; the `first` of a socket follows our code, if the room is locked.
  function onWelcome(f, first) {
    if (locked) {
      // The code was right: this tab keeps it for the next reconnect.
      if (sentCode) Secrets.setCode(server(), sentCode);
      locked = false;
      sentCode = '';
      if (el.codeDialog.open) el.codeDialog.close();
      $('input').focus(); // in: ready to write
    }
    if (first) {
      forgetBan();
      if (!Room.isMuted()) View.hideNotice();
    }
    const token = Secrets.token(server());
    if (token && !sentToken && !(f.user && f.user.operator)) {
      sentToken = Connection.sendHello({ type: 'hello', operator: token });
    }
    showOperator();
  }

  // ---- The room code, asked for ----

  // `why`: the server's words for a wrong code, or why a new connection is needed.
  function askCode(why) {
    el.codeError.textContent = why || '';
    el.codeError.hidden = !why;
    el.codeInput.value = '';
    if (!el.codeDialog.open) el.codeDialog.showModal(); // focuses the code field
    el.codeInput.focus();
  }

  el.codeForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const code = el.codeInput.value.trim();
    if (!code) {
      el.codeInput.focus();
      return;
    }
    el.codeError.hidden = true;
    el.codeDialog.close();
    if (locked && sendCode(code)) return;
    // The server stopped waiting (30 s without a code): a new connection takes the code.
    typed = { server: server(), code };
    Connection.connect({ asked: true });
  });

  // Escape: we are not going in. The socket goes; Connect brings the question back.
  el.codeDialog.addEventListener('cancel', () => {
    typed = null;
    Connection.stop(
      'Room code needed',
      'Without the room code this page cannot join the chat. Press Connect to enter it.',
    );
  });

  // ---- The operator token ----

  el.operatorForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const token = el.operatorInput.value.trim();
    if (!token) return;
    el.operatorInput.value = ''; // not left on screen
    el.operatorError.hidden = true;
    Secrets.setToken(server(), token);
    // Connected: now. Otherwise with the code, or after the next welcome.
    if (Connection.isConnected()) sentToken = Connection.sendHello({ type: 'hello', operator: token });
  });

  // The panel says whether we are an operator (unfolded when we become one); the field is
  // for those who are not yet.
  function showOperator() {
    const yes = Boolean(Room.me && Room.me.operator);
    if (yes && el.operatorYes.hidden) el.operatorPanel.open = true;
    el.operatorYes.hidden = !yes;
    el.operatorForm.hidden = yes;
    if (yes) el.operatorError.hidden = true;
  }

  // ---- Refusals the server explains with an `error` frame; true if handled here ----

  function onError(f) {
    if (f.code === 'bad_code') {
      Secrets.forgetCode(server());
      sentCode = '';
      View.setStatus('Room code needed', 'waiting');
      askCode(f.message || 'That is not the room code.');
      return true;
    }
    if (f.code === 'bad_token') {
      Secrets.forgetToken(server());
      sentToken = false;
      el.operatorPanel.open = true;
      el.operatorError.textContent = (f.message || 'wrong operator token') + ': you are not an operator.';
      el.operatorError.hidden = false;
      View.showError('Wrong operator token: you are not an operator.', f.code);
      return true;
    }
    return false;
  }

  // ---- Removed, refused ----

  // The server's `kicked`: its close (4001) follows.
  function onKicked(f) {
    removal = { reason: typeof f.reason === 'string' ? f.reason : '', until: Number(f.until) || 0 };
    if (removal.until) rememberBan(removal.until);
  }

  // The socket closed; true if the page must not reconnect by itself (and it says why).
  // `opened`: it had got its 101 (a refused handshake, such as a ban's 403, is a 1006 to a
  // browser, which learns neither the status nor the body).
  function onClosed(code, reason, opened) {
    const wasLocked = locked;
    locked = false;
    if (code === REMOVED) {
      const r = removal || { reason: '', until: 0 };
      if (r.until) {
        const until = View.formatUntil(r.until);
        Connection.stop(
          'Banned until ' + until,
          'An operator banned you from this chat until ' + until + quoted(r.reason) +
            '. Until then it refuses new connections from your network address. ' +
            'This page will not reconnect by itself.',
        );
      } else {
        Connection.stop(
          'Removed by an operator',
          'An operator removed you from the chat' + quoted(r.reason) +
            '. This page will not reconnect by itself: press Connect to come back.',
        );
      }
      return true;
    }
    if (code === REFUSED) {
      // Still at the code question, having sent no code: the server stopped waiting for one.
      // The question stays, and the code, once typed, opens a new connection.
      if (wasLocked && el.codeDialog.open && codesSent === 0) {
        View.setStatus('Room code needed', 'waiting');
        askCode('The chat stopped waiting for the code. Enter it to connect again.');
        return true;
      }
      if (el.codeDialog.open) el.codeDialog.close();
      Connection.stop(
        'Refused by the server',
        'The server refused this page: ' + (reason || 'refused') +
          '. This page will not reconnect by itself: press Connect to try again.',
      );
      return true;
    }
    if (!opened && bannedUntil()) {
      showBan();
      return true;
    }
    return false;
  }

  // “: "reason"” when there is one, as text.
  function quoted(reason) {
    return reason ? ': “' + reason + '”' : '';
  }

  // ---- A ban, remembered by this browser ----
  //
  // A browser is not told why a handshake was refused, so a banned person who opens the page
  // anew would see only a connection that fails. The `kicked` frame of the ban said until
  // when: this browser remembers it for that server, and waits instead of knocking.

  function loadBans() {
    try {
      return JSON.parse(localStorage.getItem(BANS)) || {};
    } catch (e) {
      return {};
    }
  }
  function saveBans(bans) {
    try {
      localStorage.setItem(BANS, JSON.stringify(bans));
    } catch (e) {
      /* not remembered, never mind */
    }
  }
  function rememberBan(until) {
    const bans = loadBans();
    bans[server()] = until;
    saveBans(bans);
  }
  function forgetBan() {
    const bans = loadBans();
    if (!(server() in bans)) return;
    delete bans[server()];
    saveBans(bans);
  }
  function bannedUntil() {
    const until = Number(loadBans()[server()]) || 0;
    return until > Date.now() ? until : 0;
  }
  function showBan() {
    const until = View.formatUntil(bannedUntil());
    Connection.stop(
      'Banned until ' + until,
      'An operator banned this browser from the chat until ' + until +
        '. This page will not connect by itself before then; press Connect to try anyway.',
    );
  }

  // Before connecting by itself (not when the person pressed Connect): true if it must not.
  function holdBack() {
    if (!bannedUntil()) return false;
    showBan();
    return true;
  }

  return { onConnecting, onLocked, onWelcome, onError, onKicked, onClosed, holdBack, showOperator };
})();
