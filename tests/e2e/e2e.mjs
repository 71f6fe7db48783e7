// End-to-end test of the Cyber Chat browser client, in a real (headless) Chromium.
//
// Run by tests/browser.rs, which starts the server and passes its address:
//   CYBERCHAT_URL=ws://127.0.0.1:PORT/ node tests/e2e/e2e.mjs
// The pages load www/client.html FROM DISK (file://), exactly as a person who double-clicks it.
//
// Talking to the runner (stdout/stdin, one line each):
//   we print STOP_SERVER   and wait for SERVER_STOPPED
//   we print START_SERVER  and wait for SERVER_STARTED
// With CYBERCHAT_NO_RESTART=1 the stop/start check is skipped (handy when running by hand).
//
// Every check waits with a deadline (waitForFunction / locator waits): no "sleep and hope".
// On the way it draws target/e2e-screenshot.png, two pages mid-conversation: the README's
// picture is that file, copied to www/screenshot.png.
// Output: one "ok - name" or "FAIL - name" line per check, then "N passed, N failed".
// Exit status: 0 only if every check passed.

import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { assert, check, finish, launch, watchdog } from './harness.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..');
const CLIENT = pathToFileURL(path.join(ROOT, 'www', 'client.html')).href;
const SCREENSHOT = path.join(ROOT, 'target', 'e2e-screenshot.png');
const SERVER = process.env.CYBERCHAT_URL || 'ws://127.0.0.1:1337/';
// The same server over plain HTTP, to check the page it serves itself.
const HTTP = SERVER.replace(/^ws/, 'http');
const RESTART = process.env.CYBERCHAT_NO_RESTART !== '1';
// The server keeps history across restarts only with a data dir; the runner tells us.
const PERSISTENT = process.env.CYBERCHAT_PERSISTENT === '1';

const WAIT = 5000; // deadline for anything that should happen "at once"
const CONNECTED = 'Connected to Cyber Chat';
const XSS = '<img src=x onerror=alert(1)>';

// ---- stdin lines from the runner -----------------------------------------------------

const lines = [];
let lineWaiter = null;
const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  lines.push(line.trim());
  if (lineWaiter) lineWaiter();
});

async function expectLine(expected, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const i = lines.indexOf(expected);
    if (i >= 0) {
      lines.splice(i, 1);
      return;
    }
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`runner did not answer ${expected} within ${timeoutMs} ms`);
    await new Promise((resolve) => {
      const t = setTimeout(resolve, left);
      lineWaiter = () => {
        clearTimeout(t);
        resolve();
      };
    });
    lineWaiter = null;
  }
}

async function askRunner(command, answer) {
  console.log(command);
  await expectLine(answer, 20000);
}

// ---- page helpers --------------------------------------------------------------------

const pageErrors = [];
let dialogs = 0;

function clientUrl(params) {
  const q = new URLSearchParams({ server: SERVER, ...params });
  return `${CLIENT}?${q}`;
}

// Each person gets their own browser context (own localStorage), like separate browsers.
// `named: false` opens the page without ?username=, as a first visit by double-click does.
// `record: true` installs recordBrowserApis in every page of the context.
async function openPerson(browser, name, { url, viewport, params, named = true, record = false } = {}) {
  const context = await browser.newContext({ viewport: viewport || { width: 900, height: 640 } });
  if (record) await context.addInitScript(recordBrowserApis);
  const query = named ? { username: name, ...params } : { ...params };
  return openPage(context, name, url || clientUrl(query));
}

// A page in an existing context (so with that person's localStorage), opened at `url`.
// page.sockets lists the address of every WebSocket the page opened, in order.
async function openPage(context, name, url) {
  const page = await context.newPage();
  page.sockets = [];
  page.on('websocket', (ws) => page.sockets.push(ws.url()));
  page.on('dialog', async (d) => {
    dialogs += 1;
    await d.dismiss();
  });
  page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
  await page.goto(url);
  page.person = name;
  return page;
}

// Runs in the page before its own scripts (an init script): records each use of the
// Notification API in window.__notifications and counts permission requests, while the real
// API still answers.
function recordBrowserApis() {
  const Real = window.Notification;
  window.__notifications = [];
  window.__permissionRequests = 0;
  function Recorded(title, options) {
    window.__notifications.push({ title, body: options && options.body });
    return new Real(title, options);
  }
  Object.defineProperty(Recorded, 'permission', { get: () => Real.permission });
  Recorded.requestPermission = (...args) => {
    window.__permissionRequests += 1;
    return Real.requestPermission(...args);
  };
  window.Notification = Recorded;
}

// Switching to another tab and back, as the page sees it: document.visibilityState changes and
// `visibilitychange` fires. (Headless pages are always "visible", so it is simulated.)
async function setTabHidden(page, hidden) {
  await page.evaluate((h) => {
    const state = h ? 'hidden' : 'visible';
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => state });
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => h });
    document.dispatchEvent(new Event('visibilitychange'));
  }, hidden);
}

async function waitTitle(page, title, timeout = WAIT) {
  await page.waitForFunction((t) => document.title === t, title, { timeout });
}

async function focusedId(page) {
  return page.evaluate(() => document.activeElement && document.activeElement.id);
}

// The username each WebSocket of this page asked for, in order.
function socketNames(page) {
  return page.sockets.map((u) => new URL(u).searchParams.get('username'));
}

async function waitStatus(page, text, timeout = WAIT) {
  await page.waitForFunction(
    (t) => document.getElementById('status').textContent === t && document.title === t,
    text,
    { timeout },
  );
}

async function waitStatusStartsWith(page, prefix, timeout = WAIT) {
  await page.waitForFunction(
    (p) => document.getElementById('status').textContent.startsWith(p),
    prefix,
    { timeout },
  );
}

// Type like a person and press Enter.
async function say(page, text) {
  await page.locator('#input').fill('');
  await page.locator('#input').pressSequentially(text, { delay: 2 });
  await page.locator('#input').press('Enter');
}

// Wait until a chat message with this author and text is on the page; returns its locator.
async function waitMessage(page, author, text, timeout = WAIT) {
  const msg = page
    .locator('#messages .msg')
    .filter({ has: page.locator('.author', { hasText: author }) })
    .filter({ has: page.locator('.text', { hasText: text }) });
  await msg.first().waitFor({ state: 'visible', timeout });
  return msg.first();
}

async function waitSystem(page, text, timeout = WAIT) {
  await page
    .locator('#messages .system', { hasText: text })
    .first()
    .waitFor({ state: 'attached', timeout });
}

async function waitUsers(page, names, timeout = WAIT) {
  await page.waitForFunction(
    (expected) => {
      const shown = [...document.querySelectorAll('#users .user .name')].map((n) => n.textContent);
      const count = document.getElementById('user-count').textContent.trim();
      return (
        shown.length === expected.length &&
        expected.every((n) => shown.includes(n)) &&
        count === String(expected.length)
      );
    },
    names,
    { timeout },
  );
}

async function messageTexts(page) {
  return page.locator('#messages .msg .text').allTextContents();
}

async function messageIds(page) {
  return page.$$eval('#messages .msg', (els) => els.map((e) => e.dataset.id));
}

async function systemTexts(page) {
  return page.locator('#messages .system').allTextContents();
}

async function hasClass(locator, name) {
  return locator.evaluate((e, n) => e.classList.contains(n), name);
}

// ---- the checks ----------------------------------------------------------------------

// Each person below gets an isolated browser context of their own.
const browser = await launch(['--disable-quic']);
// A hard stop for the whole script, in case something hangs outside a check's deadline.
const stop = watchdog('the e2e script', 90);

let alice;
let bob;
let carol;

try {
  await check('heading says "Connected to Cyber Chat" after connect (page opened from disk)', async () => {
    alice = await openPerson(browser, 'Alice');
    await waitStatus(alice, CONNECTED);
    assert(alice.url().startsWith('file://'), 'page is not a file:// page');
  });

  const early = 'Hello! Anyone here yet?';
  await check('Enter sends, the input is cleared and keeps the focus', async () => {
    await alice.locator('#input').focus();
    await say(alice, early);
    const own = await waitMessage(alice, 'Alice', early);
    assert(await own.evaluate((e) => e.classList.contains('own')), 'own message not marked .own');
    assert((await alice.locator('#input').inputValue()) === '', 'input not cleared');
    assert(
      await alice.evaluate(() => document.activeElement && document.activeElement.id === 'input'),
      'focus left the input',
    );
  });

  await check('welcome history: a message sent before a page opens is shown in it', async () => {
    bob = await openPerson(browser, 'Bob');
    await waitStatus(bob, CONNECTED);
    const m = await waitMessage(bob, 'Alice', early);
    assert(!(await m.evaluate((e) => e.classList.contains('own'))), "Alice's message is .own for Bob");
    const time = await m.locator('.time').textContent();
    assert(/\d/.test(time), `no local time shown (got "${time}")`);
  });

  await check('joined line in the other page ("Bob has joined the chat")', async () => {
    await waitSystem(alice, 'Bob has joined the chat');
  });

  await check("a message typed in page A appears in page B with the author's name", async () => {
    await say(alice, 'Hi Bob! Welcome to the channel.');
    await waitMessage(bob, 'Alice', 'Hi Bob! Welcome to the channel.');
    await say(bob, 'Thanks @Alice, the cursors look fun.');
    await waitMessage(alice, 'Bob', 'Thanks @Alice, the cursors look fun.');
  });

  await check('user list and count: 2 people', async () => {
    await waitUsers(alice, ['Alice', 'Bob']);
    await waitUsers(bob, ['Alice', 'Bob']);
  });

  await check('page served by the server over http:// connects to its own host', async () => {
    carol = await openPerson(browser, 'Carol', {
      url: `${HTTP}?username=Carol&cursors=1`,
      viewport: { width: 375, height: 700 },
    });
    await waitStatus(carol, CONNECTED);
    const server = await carol.locator('#server').inputValue();
    assert(server === new URL(SERVER).href, `server field says ${server}, expected ${SERVER}`);
  });

  await check('a third person joins: joined line, list and count in both pages', async () => {
    await waitSystem(alice, 'Carol has joined the chat');
    await waitSystem(bob, 'Carol has joined the chat');
    await waitUsers(alice, ['Alice', 'Bob', 'Carol']);
    await waitUsers(bob, ['Alice', 'Bob', 'Carol']);
  });

  await check('phone width (375 px): no sideways scrolling, sidebar folds behind a button', async () => {
    const overflow = await carol.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert(overflow <= 0, `page is ${overflow}px wider than the screen`);
    assert(!(await carol.locator('#users').isVisible()), 'sidebar is open on a phone by default');
    await carol.locator('#sidebar-toggle').click();
    await carol.locator('#users').waitFor({ state: 'visible', timeout: WAIT });
    await carol.locator('#input').waitFor({ state: 'visible', timeout: WAIT });
  });

  await check("live cursors: Carol's pointer is drawn in Alice's page with her name", async () => {
    await alice.locator('#cursors-toggle').check();
    await carol.mouse.move(100, 200);
    await carol.mouse.move(150, 300, { steps: 3 });
    await alice
      .locator('#cursors .cursor .label', { hasText: 'Carol' })
      .waitFor({ state: 'visible', timeout: WAIT });
    // Bob shares his pointer too (it shows in the screenshot below).
    await bob.locator('#cursors-toggle').check();
    await bob.mouse.move(420, 260, { steps: 3 });
    await alice
      .locator('#cursors .cursor .label', { hasText: 'Bob' })
      .waitFor({ state: 'visible', timeout: WAIT });
  });

  await check('the third person leaves: left line, list, count and cursor gone', async () => {
    await carol.context().close();
    carol = null;
    await waitSystem(alice, 'Carol has left the chat');
    await waitSystem(bob, 'Carol has left the chat');
    await waitUsers(alice, ['Alice', 'Bob']);
    await waitUsers(bob, ['Alice', 'Bob']);
    await alice
      .locator('#cursors .cursor', { hasText: 'Carol' })
      .waitFor({ state: 'detached', timeout: WAIT });
  });

  await check('typing line in the other page ("Bob is typing…"), gone after sending', async () => {
    await bob.locator('#input').pressSequentially('Shall we try another chan', { delay: 5 });
    await alice.waitForFunction(
      () => document.getElementById('typing').textContent === 'Bob is typing…',
      null,
      { timeout: WAIT },
    );
    // The picture for the README: two people mid-conversation.
    await screenshotSideBySide(alice, bob);
    await bob.locator('#input').pressSequentially('nel?', { delay: 5 });
    await bob.locator('#input').press('Enter');
    await waitMessage(alice, 'Bob', 'Shall we try another channel?');
    await alice.waitForFunction(() => document.getElementById('typing').textContent === '', null, {
      timeout: WAIT,
    });
  });

  await check('XSS: a message with HTML is shown literally, nothing runs', async () => {
    await say(alice, XSS);
    const m = await waitMessage(bob, 'Alice', XSS);
    assert((await m.locator('.text').textContent()) === XSS, 'text not shown literally');
    const imgs = await bob.locator('#messages img').count();
    assert(imgs === 0, `${imgs} <img> element(s) were created from a message`);
    assert(dialogs === 0, `${dialogs} dialog(s) fired`);
  });

  await check('rename: "Bob is now known as Robert" and the list follows in the other page', async () => {
    await bob.locator('#username').fill('Robert');
    await bob.locator('#username').press('Enter');
    await waitSystem(alice, 'Bob is now known as Robert');
    await waitSystem(bob, 'Bob is now known as Robert');
    await waitUsers(alice, ['Alice', 'Robert']);
  });

  await check('error frame shown near the input (#error): username_taken', async () => {
    await bob.locator('#username').fill('alice');
    await bob.locator('#username').press('Enter');
    await bob.waitForFunction(
      () => {
        const e = document.getElementById('error');
        return !e.hidden && e.dataset.code === 'username_taken' && e.textContent.trim() !== '';
      },
      null,
      { timeout: WAIT },
    );
    await bob.locator('#username').fill('Robert');
  });

  await check('reconnect (same address via the field): history again, no duplicates, same name', async () => {
    const before = await messageIds(alice);
    await alice.locator('#server').fill(SERVER);
    await alice.locator('#server').press('Enter');
    await waitStatus(alice, CONNECTED);
    await alice.waitForFunction((n) => document.querySelectorAll('#messages .msg').length >= n, before.length, {
      timeout: WAIT,
    });
    const after = await messageIds(alice);
    assert(new Set(after).size === after.length, `duplicate message ids: ${after.join(',')}`);
    assert(
      JSON.stringify(after) === JSON.stringify(before),
      `history differs: before ${before.join(',')} after ${after.join(',')}`,
    );
    assert((await alice.locator('#username').inputValue()) === 'Alice', 'name not kept');
    // Messages sent by the previous connection of this page still count as ours.
    assert(
      (await alice.locator('#messages .msg.own').count()) >= 2,
      'own messages lost their style after reconnect',
    );
  });

  await check('switch channel: messages stay in their channel', async () => {
    await bob.locator('#channel-input').fill('random');
    await bob.locator('#channel-input').press('Enter');
    await bob.waitForFunction(
      () =>
        document.getElementById('channel-title').textContent === '#random' &&
        document.querySelectorAll('#messages .msg').length === 0,
      null,
      { timeout: WAIT },
    );
    await waitSystem(alice, 'Robert has left the chat');
    await waitUsers(alice, ['Alice']);
    // The new channel shows up in the other page's channel list, with its count.
    await alice
      .locator('#channels .channel', { hasText: '#random' })
      .filter({ has: alice.locator('.count', { hasText: /^1$/ }) })
      .waitFor({ timeout: WAIT });

    await say(bob, 'Only in random');
    await waitMessage(bob, 'Robert', 'Only in random');
    await say(alice, 'Only in general');
    await waitMessage(alice, 'Alice', 'Only in general');
    // Sync point: Robert's next message comes after Alice's, so had Alice's line been sent
    // to #random it would be on Robert's page by now.
    await say(bob, 'Still only in random');
    await waitMessage(bob, 'Robert', 'Still only in random');
    assert(!(await messageTexts(alice)).some((t) => t.includes('in random')), 'general got a #random line');
    assert(!(await messageTexts(bob)).includes('Only in general'), 'random got a #general line');
  });

  await check('click a channel in the list to join it (back to #general with its history)', async () => {
    await bob.locator('#channels .channel', { hasText: '#general' }).click();
    await bob.waitForFunction(() => document.getElementById('channel-title').textContent === '#general', null, {
      timeout: WAIT,
    });
    await waitMessage(bob, 'Alice', 'Only in general');
    assert(!(await messageTexts(bob)).some((t) => t.includes('in random')), '#random lines in #general');
    await waitUsers(bob, ['Alice', 'Robert']);
  });

  await check('autoscroll only when already at the bottom (reading older lines is not disturbed)', async () => {
    // Fill the list past one screen (through the form, quicker than typing 30 lines).
    await alice.evaluate(() => {
      const input = document.getElementById('input');
      const form = document.getElementById('send-form');
      for (let i = 1; i <= 30; i += 1) {
        input.value = `Line ${i} of a long story`;
        form.requestSubmit();
      }
    });
    await waitMessage(bob, 'Alice', 'Line 30 of a long story');
    const atBottom = () =>
      bob.evaluate(() => {
        const m = document.getElementById('messages');
        return m.scrollHeight - m.scrollTop - m.clientHeight < 5;
      });
    assert(await atBottom(), 'new lines did not scroll a reader who was at the bottom');
    // Scroll up to read older lines: a new message must not move the view.
    await bob.evaluate(() => {
      document.getElementById('messages').scrollTop = 0;
    });
    await say(alice, 'A new line while Robert reads');
    await waitMessage(bob, 'Alice', 'A new line while Robert reads');
    const top = await bob.evaluate(() => document.getElementById('messages').scrollTop);
    assert(top === 0, `the view was moved to ${top}px while reading older lines`);
    // Back at the bottom, new lines are followed again.
    await bob.evaluate(() => {
      const m = document.getElementById('messages');
      m.scrollTop = m.scrollHeight;
    });
    await say(alice, 'And one more');
    await waitMessage(bob, 'Alice', 'And one more');
    assert(await atBottom(), 'the view did not follow the new line');
  });

  await check('join a channel by name again (#random), ready for the restart', async () => {
    // Back to #random, so the restart below also checks that the channel is restored.
    await bob.locator('#channel-input').fill('random');
    await bob.locator('#channel-input').press('Enter');
    await bob.waitForFunction(() => document.getElementById('channel-title').textContent === '#random', null, {
      timeout: WAIT,
    });
  });

  if (RESTART) {
    let idsBeforeStop = [];
    await check('server stops: "Disconnected — retrying in N s"', async () => {
      idsBeforeStop = await messageIds(alice);
      await askRunner('STOP_SERVER', 'SERVER_STOPPED');
      await waitStatusStartsWith(alice, 'Disconnected — retrying in ');
      await waitStatusStartsWith(bob, 'Disconnected — retrying in ');
      const status = await alice.locator('#status').textContent();
      assert(/^Disconnected — retrying in \d+ s$/.test(status), `status is "${status}"`);
      assert((await alice.title()) === status, 'document.title does not follow the heading');
    });

    await check('server back on the same port: "Connected to Cyber Chat", same name and channel', async () => {
      await askRunner('START_SERVER', 'SERVER_STARTED');
      await waitStatus(alice, CONNECTED, 15000);
      await waitStatus(bob, CONNECTED, 15000);
      assert((await alice.locator('#username').inputValue()) === 'Alice', 'Alice lost her name');
      assert((await bob.locator('#username').inputValue()) === 'Robert', 'Robert lost his name');
      const title = await bob.locator('#channel-title').textContent();
      assert(title === '#random', `Robert is in ${title}, expected #random`);
      await waitUsers(alice, ['Alice']);
      await waitUsers(bob, ['Robert']);
      const ids = await messageIds(alice);
      assert(new Set(ids).size === ids.length, 'duplicate messages after the restart');
      if (PERSISTENT) {
        // History on disk: the same messages come back, each once.
        await alice.waitForFunction(
          (n) => document.querySelectorAll('#messages .msg').length >= n,
          idsBeforeStop.length,
          { timeout: WAIT },
        );
        const back = await messageIds(alice);
        assert(
          JSON.stringify(back) === JSON.stringify(idsBeforeStop),
          `history after restart ${back.join(',')} differs from before ${idsBeforeStop.join(',')}`,
        );
      }
      // And the chat works again.
      await say(bob, 'Back again');
      await waitMessage(bob, 'Robert', 'Back again');
    });
  }

  // ---- A name before connecting, and getting your attention ----
  // Alice is in #general; Robert is in #random, out of the way.

  let dave;
  const ASKING = 'Choose a name to join';
  await check('first visit asks the name before connecting; the room hears "Dave has joined the chat"', async () => {
    dave = await openPerson(browser, 'Dave', { named: false, record: true });
    await dave.locator('#name-dialog').waitFor({ state: 'visible', timeout: WAIT });
    await waitStatus(dave, ASKING);
    assert(dave.sockets.length === 0, `a socket was opened before the name: ${dave.sockets}`);
    // Keyboard only: the question has the focus, Enter answers it.
    assert((await focusedId(dave)) === 'name-input', `focus is on #${await focusedId(dave)}`);
    await dave.keyboard.type('Dave', { delay: 5 });
    await dave.keyboard.press('Enter');
    await waitStatus(dave, CONNECTED);
    await waitSystem(alice, 'Dave has joined the chat');
    await waitUsers(alice, ['Alice', 'Dave']);
    const names = socketNames(dave);
    assert(names.length === 1 && names[0] === 'Dave', `sockets asked for ${JSON.stringify(names)}`);
    const odd = (await systemTexts(alice)).filter((t) => /guest-|now known as|Dave(?! has joined)/.test(t));
    assert(odd.length === 0, `Alice saw: ${odd.join(' | ')}`);
    assert(!(await dave.locator('#name-dialog').isVisible()), 'the question is still open');
    assert((await focusedId(dave)) === 'input', 'focus is not in the message box');
    assert((await dave.locator('#username').inputValue()) === 'Dave', 'name field does not say Dave');
    const stored = await dave.evaluate(() => localStorage.getItem('cyberchat.username'));
    assert(stored === 'Dave', `localStorage holds ${stored}`);
  });

  await check('a message that mentions @dave (any case) is highlighted in his page, as text only', async () => {
    const text = 'Hey @dave, look at <b>this</b>';
    await say(alice, text);
    const m = await waitMessage(dave, 'Alice', text);
    assert(await hasClass(m, 'mention'), 'not highlighted for Dave');
    assert((await m.locator('.text mark').allTextContents()).join() === '@dave', 'mention not marked');
    assert((await m.locator('.text').textContent()) === text, 'text not shown literally');
    assert((await dave.locator('#messages b').count()) === 0, 'a <b> was made from a message');
    assert(!(await hasClass(await waitMessage(alice, 'Alice', text), 'mention')), 'own line highlighted');
    // Not mentions: a longer name, no "@", an address.
    await say(alice, 'Not for @Davey, nor dave, nor x@dave');
    const other = await waitMessage(dave, 'Alice', 'Not for @Davey');
    assert(!(await hasClass(other, 'mention')), '"@Davey" or "x@dave" counted as a mention of Dave');
    await say(dave, 'Hello @ALICE!');
    assert(await hasClass(await waitMessage(alice, 'Dave', 'Hello @ALICE!'), 'mention'), 'Alice not highlighted');
  });

  await check('tab hidden: unread count in the title; back: count gone, "New messages" above the first', async () => {
    await setTabHidden(dave, true);
    await say(alice, 'Are you still there?');
    await say(alice, 'I will wait.');
    await waitMessage(dave, 'Alice', 'I will wait.');
    await waitTitle(dave, `(2) ${CONNECTED}`);
    assert((await dave.locator('#status').textContent()) === CONNECTED, 'the heading changed too');
    await setTabHidden(dave, false);
    await waitTitle(dave, CONNECTED);
    const marker = dave.locator('#messages .new-marker');
    assert((await marker.count()) === 1, `${await marker.count()} markers`);
    assert((await marker.textContent()) === 'New messages', 'marker text');
    const after = await marker.evaluate((e) => e.nextElementSibling.querySelector('.text').textContent);
    assert(after === 'Are you still there?', `the marker is above "${after}"`);
    const inView = await marker.evaluate((e) => {
      const r = e.getBoundingClientRect();
      const box = document.getElementById('messages').getBoundingClientRect();
      return r.top >= box.top && r.bottom <= box.bottom;
    });
    assert(inView, 'the marker is not in view on coming back');
    // While the tab is visible nothing counts; the next time away gets its own marker.
    await say(alice, 'Good, you are back.');
    await waitMessage(dave, 'Alice', 'Good, you are back.');
    assert((await dave.title()) === CONNECTED, `title is "${await dave.title()}" while visible`);
    await setTabHidden(dave, true);
    await say(alice, 'One more while you are away');
    await waitTitle(dave, `(1) ${CONNECTED}`);
    await setTabHidden(dave, false);
    await waitTitle(dave, CONNECTED);
    const moved = await marker.evaluate((e) => e.nextElementSibling.querySelector('.text').textContent);
    assert((await marker.count()) === 1 && moved === 'One more while you are away', `marker above "${moved}"`);
  });

  await check('notifications for mentions: asked for only on a click, then one per mention while away', async () => {
    assert((await dave.evaluate(() => window.__permissionRequests)) === 0, 'permission asked on load');
    const toggle = dave.locator('#notify-toggle');
    await toggle.click();
    await dave.waitForFunction(() => window.__permissionRequests === 1, null, { timeout: WAIT });
    // Headless Chromium answers the prompt "denied": the box unticks and says why.
    await dave.waitForFunction(
      () =>
        !document.getElementById('notify-toggle').checked &&
        /blocked/.test(document.getElementById('notify-hint').textContent),
      null,
      { timeout: WAIT },
    );
    // Allowed in the browser's settings, then ticked from the keyboard: nothing more is asked.
    await dave.context().grantPermissions(['notifications']);
    await toggle.focus();
    await dave.keyboard.press('Space');
    await dave.waitForFunction(() => document.getElementById('notify-toggle').checked, null, { timeout: WAIT });
    assert((await dave.evaluate(() => window.__permissionRequests)) === 1, 'asked again');
    await setTabHidden(dave, true);
    await say(alice, 'A line for everyone');
    await say(alice, '@Dave your turn');
    await waitMessage(dave, 'Alice', '@Dave your turn');
    await dave.waitForFunction(() => window.__notifications.length > 0, null, { timeout: WAIT });
    const shown = await dave.evaluate(() => window.__notifications);
    assert(shown.length === 1, `${shown.length} notifications: ${JSON.stringify(shown)}`);
    assert(shown[0].title === 'Alice mentioned you in #general', `title "${shown[0].title}"`);
    assert(shown[0].body === '@Dave your turn', `body "${shown[0].body}"`);
    // Looking at the chat: a mention is highlighted, not notified.
    await setTabHidden(dave, false);
    await say(alice, '@Dave are you reading?');
    await waitMessage(dave, 'Alice', '@Dave are you reading?');
    assert((await dave.evaluate(() => window.__notifications.length)) === 1, 'notified while looking');
  });

  await check('a later visit uses the remembered name at once, and so does a reconnect', async () => {
    const context = dave.context();
    await dave.close();
    await waitSystem(alice, 'Dave has left the chat');
    dave = await openPage(context, 'Dave', clientUrl({}));
    await waitStatus(dave, CONNECTED);
    assert(!(await dave.locator('#name-dialog').isVisible()), 'asked for the name again');
    await waitUsers(alice, ['Alice', 'Dave']);
    await waitUsers(dave, ['Alice', 'Dave']);
    // The notification choice is remembered too, and still not asked for on load.
    assert(await dave.locator('#notify-toggle').isChecked(), 'notifications forgotten');
    assert((await dave.evaluate(() => window.__permissionRequests)) === 0, 'permission asked on load');
    const oldId = await dave.evaluate(() => Room.me.id);
    await dave.locator('#server').fill(SERVER);
    await dave.locator('#server').press('Enter');
    // The heading already said "Connected" before the Enter: wait for the new socket's own
    // welcome (a new id), with the name Dave (taken back, had the old socket still held it).
    const newId = await (
      await dave.waitForFunction(
        (old) => Connection.isConnected() && Room.me.id !== old && Room.me.username === 'Dave' && Room.me.id,
        oldId,
        { timeout: WAIT },
      )
    ).jsonValue();
    await dave.waitForFunction(() => document.querySelectorAll('#messages .msg').length > 0, null, {
      timeout: WAIT,
    });
    await waitStatus(dave, CONNECTED);
    const names = socketNames(dave);
    assert(JSON.stringify(names) === '["Dave","Dave"]', `sockets asked for ${JSON.stringify(names)}`);
    // Alice has seen everything the reconnect made her see (a guest's arrival and rename too)
    // once she lists the new Dave by name; and all of his leaving once he is off her list. A
    // "Dave has left the chat" line is no such fence: the first visit's is already there.
    await alice.waitForFunction((id) => Room.users.get(id)?.username === 'Dave', newId, { timeout: WAIT });
    await context.close();
    dave = null;
    await alice.waitForFunction((id) => !Room.users.has(id), newId, { timeout: WAIT });
  });

  await check('two windows of one browser (the quick start): the second asks for a name of its own', async () => {
    // Fay's first window chooses "Fay", which her browser remembers. A second window opened
    // from disk must not connect as Fay too, to be turned into a guest: it asks first.
    const before = (await systemTexts(alice)).length; // what Alice saw before this check
    const fay = await openPerson(browser, 'Fay', { named: false });
    const context = fay.context();
    try {
      await fay.locator('#name-dialog').waitFor({ state: 'visible', timeout: WAIT });
      await fay.keyboard.type('Fay', { delay: 5 });
      await fay.keyboard.press('Enter');
      await waitStatus(fay, CONNECTED);
      const second = await openPage(context, 'Fay, second window', clientUrl({}));
      await second.locator('#name-dialog').waitFor({ state: 'visible', timeout: WAIT });
      await waitStatus(second, ASKING);
      assert(second.sockets.length === 0, `connected before asking: ${second.sockets}`);
      const hint = await second.locator('#name-dialog .hint').textContent();
      assert(hint.includes('Fay'), `the question does not say why it is asked: "${hint}"`);
      await second.keyboard.type('Gus', { delay: 5 });
      await second.keyboard.press('Enter');
      await waitStatus(second, CONNECTED);
      await waitSystem(alice, 'Gus has joined the chat');
      await waitUsers(second, ['Alice', 'Fay', 'Gus']);
      assert(JSON.stringify(socketNames(second)) === '["Gus"]', `sockets: ${second.sockets}`);
      const seen = (await systemTexts(alice)).slice(before);
      const odd = seen.filter((t) => /guest-|now known as/.test(t));
      assert(odd.length === 0, `Alice saw: ${odd.join(' | ')}`);
    } finally {
      await context.close();
    }
    await waitSystem(alice, 'Gus has left the chat');
  });

  await check('phone width, keyboard only: Escape on the name question, the sidebar field asks instead', async () => {
    const erin = await openPerson(browser, 'Erin', { named: false, viewport: { width: 375, height: 700 } });
    try {
      await erin.locator('#name-dialog').waitFor({ state: 'visible', timeout: WAIT });
      const fits = await erin.evaluate(() => {
        const r = document.getElementById('name-dialog').getBoundingClientRect();
        const wide = document.documentElement.scrollWidth - window.innerWidth;
        return r.left >= 0 && r.right <= window.innerWidth && wide <= 0;
      });
      assert(fits, 'the name question does not fit a 375 px screen');
      await erin.keyboard.press('Escape');
      await erin.locator('#name-dialog').waitFor({ state: 'hidden', timeout: WAIT });
      await waitStatus(erin, ASKING);
      assert((await focusedId(erin)) === 'username', `focus is on #${await focusedId(erin)}`);
      assert(await erin.locator('#name-hint').isVisible(), 'the sidebar does not ask for a name');
      assert(erin.sockets.length === 0, 'connected without a name');
      await erin.keyboard.type('Erin', { delay: 5 });
      await erin.keyboard.press('Enter');
      await waitStatus(erin, CONNECTED);
      await waitSystem(alice, 'Erin has joined the chat');
      assert(JSON.stringify(socketNames(erin)) === '["Erin"]', `sockets: ${erin.sockets}`);
    } finally {
      await erin.context().close();
    }
    await waitSystem(alice, 'Erin has left the chat');
  });

  await check('a welcome marked resync replaces the messages shown and says so', async () => {
    // What a server of several sends when it fell too far behind to deliver messages live.
    await alice.evaluate(() => {
      const m = { type: 'message', id: 1e9, channel: Room.channel, user: { id: 'x', username: 'Zed' },
        text: 'a message you missed', ts: Date.now() };
      Frames.handle({ type: 'welcome', text: 'Welcome to Cyber Chat', user: Room.me, channel: Room.channel,
        users: [...Room.users.values()], history: [m], online: 1, resync: true });
    });
    await waitMessage(alice, 'Zed', 'a message you missed');
    await waitSystem(alice, 'Some messages did not reach you live: the recent messages are shown again.');
    assert((await messageTexts(alice)).length === 1, 'the old list was not replaced');
  });

  await check('ids that start again (a store that lost its count) still show; "not sent" goes once one is', async () => {
    // Step 8 after Redis restarted empty: the next message is id 1 again, not a repeat of 1.
    await alice.evaluate(() => {
      Frames.handle({ type: 'error', code: 'unavailable', message: 'Redis is away, so your message was not sent.' });
      const again = (text, ts) => ({ type: 'message', id: 1, channel: Room.channel, user: Room.me, text, ts });
      Frames.handle(again('number one', 1000));
      Frames.handle(again('number one', 1000)); // the same message twice: shown once
      Frames.handle(again('number one, once more', 2000));
    });
    await waitMessage(alice, 'Alice', 'number one, once more');
    const ones = (await messageTexts(alice)).filter((t) => t.startsWith('number one'));
    assert(JSON.stringify(ones) === '["number one","number one, once more"]', `shown: ${JSON.stringify(ones)}`);
    assert(!(await alice.locator('#error').isVisible()), 'the "not sent" error stays after a message went through');
  });

  await check('a message refused for the rate limit goes back into the box, and sends again', async () => {
    // 45 frames, then the message, in one go: the bucket holds 40, so the message is refused.
    await alice.evaluate(() => {
      for (let i = 0; i < 45; i++) Connection.send({ type: 'typing', typing: false });
      document.getElementById('input').value = 'sent too fast, kept';
      document.getElementById('send-form').requestSubmit();
    });
    await alice.waitForFunction(() => document.getElementById('input').value === 'sent too fast, kept',
      null, { timeout: WAIT });
    const error = await alice.locator('#error').textContent();
    assert(error.includes('back in the box'), `error shown: ${error}`);
    await alice.waitForTimeout(2500); // the bucket fills again (20 a second)
    await alice.locator('#input').press('Enter');
    await waitMessage(alice, 'Alice', 'sent too fast, kept'); // (it came back from the server)
    assert((await alice.locator('#input').inputValue()) === '', 'the box is empty once it went through');
  });

  await check('with two messages not back yet, a refusal puts neither back (it cannot tell which)', async () => {
    // Several servers: "hi" was taken and is on its way round Redis when "there" is refused.
    const box = await alice.evaluate(() => {
      Room.unconfirmed = [{ text: 'hi', at: Date.now() }, { text: 'there', at: Date.now() }];
      Frames.handle({ type: 'error', code: 'unavailable', message: 'Redis is away, so your message was not sent.' });
      const value = document.getElementById('input').value;
      Room.unconfirmed = [];
      return value;
    });
    assert(box === '', `the box holds ${JSON.stringify(box)}`);
  });

  await check('no JavaScript errors and no dialogs in any page', async () => {
    assert(pageErrors.length === 0, pageErrors.join('; '));
    assert(dialogs === 0, `${dialogs} dialog(s) fired`);
  });
} finally {
  clearTimeout(stop);
  await browser.close().catch(() => {});
  rl.close();
}

// Two pages side by side in one picture: draw both screenshots in a scratch page.
async function screenshotSideBySide(left, right) {
  const [a, b] = await Promise.all([left.screenshot(), right.screenshot()]);
  const page = await browser.newPage({ viewport: { width: 1816, height: 640 } });
  try {
    await page.setContent(
      `<body style="margin:0;background:#222;display:flex;gap:16px">` +
        `<img src="data:image/png;base64,${a.toString('base64')}">` +
        `<img src="data:image/png;base64,${b.toString('base64')}"></body>`,
    );
    mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT });
  } finally {
    await page.close();
  }
}

finish('e2e: ');
