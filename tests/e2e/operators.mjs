// The browser page in a chat with a room code and operators, in a real (headless) Chromium:
// the code asked for or taken from the invite link (and gone from the address bar), wrong
// codes, an operator from the link, a wrong token, and an operator who kicks, mutes and bans
// with the keyboard alone; what the removed, the muted and the banned see, and that their
// pages do not reconnect by themselves; names and reasons from the server shown as text.
//
// Run by tests/browser.rs (the page from disk, the server in its process) and by
// tests/deploy.rs (the page through nginx over https), which start the server and pass:
//   CYBERCHAT_PAGE   the page's address, with its query (file:///…/client.html?server=ws://…/
//                    or https://localhost:PORT/client.html)
//   CYBERCHAT_CODE, CYBERCHAT_TOKEN   the server's room code and operator token
//   CYBERCHAT_LOCKED_FOR_S  (optional) how long the server waits for a code; the check that
//                    waits it out runs only when it is given
// Every person's page comes from the same address (the browser's), so the ban, which refuses
// that address, comes last. Wrong codes and tokens here stay under the 10 an address may send.
// Output: one "ok - name" or "FAIL - name" line per check, then "N passed, N failed".
// Exit status: 0 only if every check passed.

import { assert, check, finish, launch, watchdog } from './harness.mjs';

const PAGE = process.env.CYBERCHAT_PAGE;
const CODE = process.env.CYBERCHAT_CODE;
const TOKEN = process.env.CYBERCHAT_TOKEN;
const LOCKED_FOR_S = Number(process.env.CYBERCHAT_LOCKED_FOR_S) || 0;
const WAIT = 10000; // for anything that should happen "at once", on a busy machine
const RETRY_AFTER_MS = 2500; // past the page's first retry (1 s): time enough to see none
const CONNECTED = 'Connected to Cyber Chat';
const HOSTILE_NAME = '<img src=x onerror=alert(1)>';
const HOSTILE_REASON = '<img src=y onerror=alert(2)> & <b>bye</b>';
if (!PAGE || !CODE || !TOKEN) {
  console.log('FAIL - CYBERCHAT_PAGE, CYBERCHAT_CODE and CYBERCHAT_TOKEN must be set');
  process.exit(1);
}

// The proxy's certificate (tests/deploy.rs) is the test's own.
const browser = await launch(['--ignore-certificate-errors']);
const stop = watchdog('operators.mjs', 110);

const pageErrors = [];
let dialogs = 0;

// The page for `name` (in the query), with `hash` as its fragment.
function pageUrl(name, hash = '') {
  const url = new URL(PAGE);
  if (name) url.searchParams.set('username', name);
  url.hash = hash;
  return url.href;
}

// Each person in a browser context of their own (their own storage), as separate browsers.
// `named: false`: no name in the query, as a first visit from an invite link; `clock: true`:
// the page's clock is the test's, to move ahead (page.clock).
async function person(name, hash, { named = true, clock = false } = {}) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1000, height: 700 } });
  return openPage(context, name, pageUrl(named ? name : '', hash), { clock });
}

// A page recording each socket's address and the frames it sent and received.
async function openPage(context, name, url, { clock = false } = {}) {
  const page = await context.newPage();
  if (clock) await page.clock.install();
  page.person = name;
  page.sockets = [];
  page.sent = [];
  page.received = [];
  page.on('websocket', (ws) => {
    page.sockets.push(ws.url());
    ws.on('framesent', (f) => page.sent.push(String(f.payload)));
    ws.on('framereceived', (f) => page.received.push(String(f.payload)));
  });
  page.on('dialog', async (d) => {
    dialogs += 1;
    await d.dismiss();
  });
  page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
  await page.goto(url);
  return page;
}

const text = (page, selector) => page.locator(selector).textContent();
const focusedId = (page) => page.evaluate(() => document.activeElement && document.activeElement.id);

async function waitStatus(page, wanted, timeout = WAIT) {
  await page.waitForFunction(
    (t) => document.getElementById('status').textContent.startsWith(t) && document.title.startsWith(t),
    wanted,
    { timeout },
  );
}
async function waitVisible(page, selector, timeout = WAIT) {
  await page.locator(selector).waitFor({ state: 'visible', timeout });
}
async function waitHidden(page, selector, timeout = WAIT) {
  await page.locator(selector).waitFor({ state: 'hidden', timeout });
}
async function waitSystem(page, line, timeout = WAIT) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('#messages .system')].some((e) => e.textContent === t),
    line,
    { timeout },
  );
}
async function waitNotice(page, part, timeout = WAIT) {
  await page.waitForFunction(
    (t) => {
      const n = document.getElementById('notice');
      return !n.hidden && n.textContent.includes(t);
    },
    part,
    { timeout },
  );
}
async function waitError(page, code, timeout = WAIT) {
  await page.waitForFunction(
    (c) => {
      const e = document.getElementById('error');
      return !e.hidden && e.dataset.code === c && e.textContent.trim() !== '';
    },
    code,
    { timeout },
  );
}
// The people list as "name tags" lines, e.g. ["Ann", "Olga operator"].
async function people(page) {
  return page.$$eval('#users .user', (rows) =>
    rows.map((r) => [...r.querySelectorAll('.name, .tag')].map((t) => t.textContent).join(' ')),
  );
}
async function waitPeople(page, want, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const rows = await people(page);
    if (rows.length === want.length && want.every((w) => rows.includes(w))) return;
    assert(Date.now() < deadline, `${page.person}'s list: ${JSON.stringify(rows)}, not ${JSON.stringify(want)}`);
    await page.waitForTimeout(50);
  }
}
// The people list's action buttons, by their accessible names ("Kick Ann").
async function actionLabels(page) {
  return page.$$eval('#users button.action', (bs) => bs.map((b) => b.getAttribute('aria-label')));
}
// Keyboard only: Tab from the top of the page until the focus is on the control named
// `label` (its aria-label, or its text); fails if it is not reachable.
async function tabTo(page, label, most = 80) {
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  for (let i = 0; i < most; i += 1) {
    await page.keyboard.press('Tab');
    const at = await page.evaluate(() => {
      const e = document.activeElement;
      return e ? e.getAttribute('aria-label') || e.textContent.trim() : '';
    });
    if (at === label) return;
  }
  throw new Error(`"${label}" is not reachable with Tab in ${most} presses`);
}
async function waitSockets(page, n, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  while (page.sockets.length < n) {
    assert(Date.now() < deadline, `${page.person}'s page opened ${page.sockets.length} socket(s), not ${n}`);
    await page.waitForTimeout(50);
  }
}
// Waits, then checks that no new socket was opened: the page did not reconnect by itself.
async function staysClosed(page) {
  const before = page.sockets.length;
  await page.waitForTimeout(RETRY_AFTER_MS);
  const more = page.sockets.length - before;
  assert(more === 0, `${page.person}'s page opened ${more} more socket(s)`);
}
// The secrets went nowhere but in `hello` frames: not in any socket's address, not in any
// other frame, not in localStorage, not in the address bar.
async function secretsKept(page) {
  for (const secret of [CODE, TOKEN]) {
    const where = [];
    const holds = (url) => url.includes(secret) || url.includes(encodeURIComponent(secret));
    if (page.sockets.some(holds)) where.push('a socket address');
    if (page.sent.some((f) => f.includes(secret) && JSON.parse(f).type !== 'hello')) where.push('a frame but hello');
    if (holds(page.url())) where.push('the address bar');
    const local = await page.evaluate(() => JSON.stringify({ ...localStorage }));
    if (local.includes(secret)) where.push('localStorage');
    assert(where.length === 0, `${page.person}: a secret is in ${where.join(', ')}`);
  }
}
function frames(page, type) {
  return page.received.map((f) => JSON.parse(f)).filter((f) => f.type === type);
}
// The end `ts` as "14:05" in the page's locale, rounded up to the minute: when it is over.
function hhmm(page, ts) {
  const over = Math.ceil(ts / 60000) * 60000;
  return page.evaluate((t) => new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }), over);
}

let ann;
let ben;
let cat;
let olga;
let eve;
let dan;

try {
  await check('a locked chat asks for the room code first; keyboard only; a wrong code asks again', async () => {
    ann = await person('Ann');
    await waitVisible(ann, '#code-dialog');
    await waitStatus(ann, 'Room code needed');
    assert((await focusedId(ann)) === 'code-input', `focus is on #${await focusedId(ann)}`);
    await ann.keyboard.type('not-the-code', { delay: 5 });
    await ann.keyboard.press('Enter');
    await ann.waitForFunction(() => /wrong room code/.test(document.getElementById('code-error').textContent), null, {
      timeout: WAIT,
    });
    await waitVisible(ann, '#code-dialog');
    await waitStatus(ann, 'Room code needed');
    assert((await focusedId(ann)) === 'code-input', 'the focus left the code field');
    await ann.keyboard.type(CODE, { delay: 5 });
    await ann.keyboard.press('Enter');
    await waitStatus(ann, CONNECTED);
    await waitHidden(ann, '#code-dialog');
    assert((await focusedId(ann)) === 'input', 'the focus is not in the message box');
    await waitPeople(ann, ['Ann']);
    const hellos = ann.sent.filter((f) => JSON.parse(f).type === 'hello').map((f) => JSON.parse(f).code);
    assert(JSON.stringify(hellos) === JSON.stringify(['not-the-code', CODE]), `hellos: ${hellos}`);
    await secretsKept(ann);
  });

  await check('the invite link (#code=), first visit: the name is asked, never the code; it leaves the address bar; a reload and a reconnect need no code', async () => {
    ben = await person('Ben', `code=${encodeURIComponent(CODE)}`, { named: false });
    await waitVisible(ben, '#name-dialog');
    assert(!ben.url().includes('code='), `the address bar says ${ben.url()}`);
    await ben.keyboard.type('Ben', { delay: 5 });
    await ben.keyboard.press('Enter');
    await waitStatus(ben, CONNECTED);
    assert(!(await ben.locator('#code-dialog').isVisible()), 'the code was asked for');
    assert(!ben.url().includes('#') && !ben.url().includes('code='), `the address bar says ${ben.url()}`);
    await secretsKept(ben);
    await waitPeople(ann, ['Ann', 'Ben']);
    await ben.reload();
    await waitStatus(ben, CONNECTED);
    assert(!(await ben.locator('#code-dialog').isVisible()), 'asked for the code after a reload');
    await ben.locator('#server-form button').press('Enter'); // Connect: a new socket
    await waitSockets(ben, 3);
    await waitStatus(ben, CONNECTED);
    assert(!(await ben.locator('#code-dialog').isVisible()), 'asked for the code after a reconnect');
    await secretsKept(ben);
  });

  await check('another tab of the same browser asks again (the code is kept per tab); Escape leaves it out', async () => {
    const tab = await openPage(ben.context(), 'Ben, second tab', pageUrl('Benjamin'));
    try {
      await waitVisible(tab, '#code-dialog');
      await tab.keyboard.press('Escape');
      await waitHidden(tab, '#code-dialog');
      await waitStatus(tab, 'Room code needed');
      await waitNotice(tab, 'Press Connect to enter it');
      await staysClosed(tab);
    } finally {
      await tab.close();
    }
  });

  await check('three wrong codes: the page says why (4003) and does not reconnect; Connect asks again', async () => {
    cat = await person('Cat', '', { clock: true });
    for (let i = 1; i <= 3; i += 1) {
      await waitVisible(cat, '#code-dialog');
      await cat.locator('#code-input').fill(`wrong-${i}`);
      await cat.locator('#code-input').press('Enter');
      if (i < 3) {
        await cat.waitForFunction(
          (n) => document.getElementById('code-error').textContent.includes(`${n} more tries`),
          3 - i,
          { timeout: WAIT },
        );
      }
    }
    await waitStatus(cat, 'Refused by the server');
    await waitNotice(cat, 'wrong room code three times');
    assert(!(await cat.locator('#code-dialog').isVisible()), 'the question is still open');
    await staysClosed(cat);
    await cat.locator('#server-form button').click();
    await waitVisible(cat, '#code-dialog');
    await cat.keyboard.type(CODE, { delay: 5 });
    await cat.keyboard.press('Enter');
    await waitStatus(cat, CONNECTED);
    await waitPeople(ann, ['Ann', 'Ben', 'Cat']);
  });

  if (LOCKED_FOR_S) {
    await check(`a code not given within ${LOCKED_FOR_S} s: the question stays, and the code opens a new connection`, async () => {
      const slow = await person('Slow');
      try {
        await waitVisible(slow, '#code-dialog');
        await slow.waitForFunction(
          () => /stopped waiting/.test(document.getElementById('code-error').textContent),
          null,
          { timeout: LOCKED_FOR_S * 1000 + WAIT },
        );
        assert(await slow.locator('#code-dialog').isVisible(), 'the question closed');
        assert(slow.sockets.length === 1, 'it reconnected by itself');
        await slow.keyboard.type(CODE, { delay: 5 });
        await slow.keyboard.press('Enter');
        await waitStatus(slow, CONNECTED);
        assert(slow.sockets.length === 2, `${slow.sockets.length} sockets`);
      } finally {
        await slow.context().close();
      }
    });
  } else {
    console.log('skip - the code not given in time (CYBERCHAT_LOCKED_FOR_S not set)');
  }

  await check('an operator from #code=…&operator=…: "operator" beside her name everywhere, both secrets gone from the address bar', async () => {
    const hash = `code=${encodeURIComponent(CODE)}&operator=${encodeURIComponent(TOKEN)}`;
    olga = await person('Olga', hash);
    await waitStatus(olga, CONNECTED);
    assert(!olga.url().includes('#'), `the address bar says ${olga.url()}`);
    await secretsKept(olga);
    const hello = olga.sent.map((f) => JSON.parse(f)).find((f) => f.type === 'hello');
    assert(hello && hello.code === CODE && hello.operator === TOKEN, 'code and token not in one hello');
    for (const page of [olga, ann, ben, cat]) await waitPeople(page, ['Ann', 'Ben', 'Cat', 'Olga operator']);
    await waitVisible(olga, '#operator-yes');
    const labels = await actionLabels(olga);
    for (const who of ['Ann', 'Ben', 'Cat']) {
      for (const verb of ['Kick', 'Mute', 'Ban']) assert(labels.includes(`${verb} ${who}`), `no "${verb} ${who}"`);
    }
    assert(!labels.some((l) => l.endsWith('Olga')), 'controls on herself');
    assert((await actionLabels(ann)).length === 0, 'Ann, not an operator, has controls');
  });

  await check('a wrong token in the field: bad_token shows; the right one makes an operator, marked in every list', async () => {
    await ben.locator('#operator-panel summary').click();
    await ben.locator('#operator-token').fill('not-the-token');
    await ben.locator('#operator-token').press('Enter');
    await ben.waitForFunction(
      () => {
        const e = document.getElementById('operator-error');
        return !e.hidden && /wrong operator token/.test(e.textContent);
      },
      null,
      { timeout: WAIT },
    );
    await waitError(ben, 'bad_token');
    assert((await ben.locator('#operator-token').inputValue()) === '', 'the token is left in the field');
    assert(!(await people(olga)).includes('Ben operator'), 'Ben is an operator');
    await ben.locator('#operator-token').fill(TOKEN);
    await ben.locator('#operator-token').press('Enter');
    await waitSystem(ann, 'Ben is an operator now');
    await waitPeople(ann, ['Ann', 'Ben operator', 'Cat', 'Olga operator']);
    await waitVisible(ben, '#operator-yes');
    await olga.waitForFunction(
      () => !document.querySelector('#users button[aria-label="Kick Ben"]'),
      null,
      { timeout: WAIT },
    );
    await secretsKept(ben);
  });

  await check('pointed at another server that says locked, the page asks: the code and the token are never sent there', async () => {
    const heard = [];
    await ben.routeWebSocket(
      (url) => url.hostname === 'elsewhere.example',
      (ws) => {
        ws.onMessage((m) => heard.push(String(m)));
        ws.send(JSON.stringify({ type: 'locked', text: 'This chat needs a room code' }));
      },
    );
    const home = await ben.locator('#server').inputValue();
    await ben.locator('#server').fill('ws://elsewhere.example/');
    await ben.locator('#server').press('Enter');
    await waitVisible(ben, '#code-dialog');
    await ben.keyboard.press('Escape');
    await waitStatus(ben, 'Room code needed');
    assert(!heard.some((f) => f.includes(CODE) || f.includes(TOKEN)), `the other server heard ${heard}`);
    await ben.locator('#server').fill(home);
    await ben.locator('#server').press('Enter');
    await waitStatus(ben, CONNECTED);
    assert(!(await ben.locator('#code-dialog').isVisible()), 'asked for the code at home');
    await waitPeople(ann, ['Ann', 'Ben operator', 'Cat', 'Olga operator']);
  });

  await check('not an operator: kick is refused (forbidden) and shown', async () => {
    const olgaId = await olga.evaluate(() => Room.me.id);
    await ann.evaluate((id) => Connection.send({ type: 'kick', user: id }), olgaId);
    await waitError(ann, 'forbidden');
  });

  await check('an operator kicks with the keyboard alone; the kicked page says why, as text, and does not reconnect', async () => {
    eve = await person(HOSTILE_NAME, `code=${encodeURIComponent(CODE)}`);
    await waitStatus(eve, CONNECTED);
    await waitPeople(olga, ['Ann', 'Ben operator', 'Cat', 'Olga operator', HOSTILE_NAME]);
    await tabTo(olga, `Kick ${HOSTILE_NAME}`);
    await olga.keyboard.press('Enter');
    await waitVisible(olga, '#moderate-dialog');
    assert((await text(olga, '#moderate-title')) === `Kick ${HOSTILE_NAME}`, 'the title');
    assert((await focusedId(olga)) === 'moderate-reason', `focus is on #${await focusedId(olga)}`);
    await olga.keyboard.type(HOSTILE_REASON, { delay: 2 });
    await olga.keyboard.press('Enter');
    await waitHidden(olga, '#moderate-dialog');
    await waitStatus(eve, 'Removed by an operator');
    await waitNotice(eve, `“${HOSTILE_REASON}”`);
    const kicked = frames(eve, 'kicked');
    assert(kicked.length === 1 && kicked[0].reason === HOSTILE_REASON, `kicked: ${JSON.stringify(kicked)}`);
    for (const page of [olga, ann]) await waitSystem(page, `${HOSTILE_NAME} was removed by an operator`);
    await waitPeople(olga, ['Ann', 'Ben operator', 'Cat', 'Olga operator']);
    const focus = await olga.evaluate((e = document.activeElement) => e.getAttribute('aria-label') || e.id);
    assert(/^Kick |^input$/.test(focus), `the focus went to "${focus}"`);
    await staysClosed(eve);
    for (const page of [eve, olga, ann]) {
      const made = await page.locator('img, b').count();
      assert(made === 0, `${made} element(s) made from a name or a reason in ${page.person}'s page`);
    }
  });

  let until = 0;
  await check('an operator mutes for 5 minutes from the keyboard; the muted page and its input say until when; the channel is told', async () => {
    await tabTo(olga, 'Mute Cat');
    await olga.keyboard.press('Enter');
    await waitVisible(olga, '#moderate-dialog');
    assert((await focusedId(olga)) === 'moderate-minutes', `focus is on #${await focusedId(olga)}`);
    await olga.keyboard.type('5'); // replaces the 10 offered
    await olga.keyboard.press('Enter');
    await cat.waitForFunction(() => document.getElementById('input').disabled, null, { timeout: WAIT });
    const muted = frames(cat, 'muted');
    assert(muted.length === 1, `muted frames: ${muted.length}`);
    until = muted[0].until;
    const offBy = until - (Date.now() + 5 * 60000);
    assert(Math.abs(offBy) < 60000, `muted until ${new Date(until).toISOString()}, not in 5 minutes`);
    const when = await hhmm(cat, until);
    await waitNotice(cat, `muted you until ${when}`);
    const placeholder = await cat.locator('#input').getAttribute('placeholder');
    assert(placeholder.includes(`until ${when}`), `the input says "${placeholder}"`);
    await waitSystem(cat, `An operator muted you until ${when}`);
    await waitSystem(ann, `Cat was muted by an operator until ${when}`);
    await waitPeople(ann, ['Ann', 'Ben operator', `Cat muted until ${when}`, 'Olga operator']);
    // Nothing the server would refuse is sent meanwhile.
    await cat.mouse.move(200, 200);
    await cat.mouse.move(300, 300, { steps: 4 });
    assert(!(await cat.locator('#error').isVisible()), `an error: ${await text(cat, '#error')}`);
  });

  await check("a mute runs out by itself in the muted page: at its end the input is free again (the server's word stands)", async () => {
    await cat.clock.fastForward(until - Date.now() + 1000); // the page's clock, past the end
    await cat.waitForFunction(() => !document.getElementById('input').disabled, null, { timeout: WAIT });
    assert(!(await cat.locator('#notice').isVisible()), 'the notice stays');
    assert(!(await people(cat)).some((p) => p.includes('muted')), `Cat's list: ${await people(cat)}`);
    // The server's clock has not moved: what Cat says is refused, and Cat is told so.
    await cat.locator('#input').fill('Can I speak?');
    await cat.locator('#input').press('Enter');
    await waitError(cat, 'muted');
  });

  await check('mute 0 lifts it: the input is free again and the muted can speak', async () => {
    await tabTo(olga, 'Mute Cat');
    await olga.keyboard.press('Enter');
    await waitVisible(olga, '#moderate-dialog');
    await olga.keyboard.type('0');
    await olga.keyboard.press('Enter');
    await waitSystem(ann, 'Cat may speak again');
    await waitSystem(cat, 'An operator lifted your mute');
    assert(!(await cat.locator('#input').isDisabled()), 'the input is not free');
    await cat.locator('#input').fill('Thank you');
    await cat.locator('#input').press('Enter');
    await ann
      .locator('#messages .msg', { hasText: 'Thank you' })
      .first()
      .waitFor({ state: 'visible', timeout: WAIT });
  });

  await check("an operator's target left meanwhile: unknown_user shows", async () => {
    await tabTo(olga, 'Kick Cat');
    await olga.keyboard.press('Enter');
    await waitVisible(olga, '#moderate-dialog');
    await cat.context().close();
    await waitSystem(olga, 'Cat has left the chat');
    await olga.keyboard.press('Enter');
    await waitError(olga, 'unknown_user');
  });

  await check('ban: minutes, then a confirmation whose safe answer has the focus; the banned page says until when, no reconnect', async () => {
    dan = await person('Dan', `code=${encodeURIComponent(CODE)}`);
    await waitStatus(dan, CONNECTED);
    await waitPeople(olga, ['Ann', 'Ben operator', 'Dan', 'Olga operator']);
    await tabTo(olga, 'Ban Dan');
    await olga.keyboard.press('Enter');
    await waitVisible(olga, '#moderate-dialog');
    assert((await focusedId(olga)) === 'moderate-minutes', `focus is on #${await focusedId(olga)}`);
    await olga.keyboard.type('0'); // below a ban's least: refused by the form
    await olga.keyboard.press('Enter');
    assert(await olga.locator('#moderate-ask').isVisible(), 'a 0-minute ban went on');
    await olga.keyboard.press('Control+A');
    await olga.keyboard.type('30');
    await olga.keyboard.press('Enter');
    await waitVisible(olga, '#moderate-confirm');
    assert((await focusedId(olga)) === 'moderate-back', `focus is on #${await focusedId(olga)}`);
    assert((await text(olga, '#moderate-confirm-text')).includes('Ban Dan for 30 minutes'), 'the question');
    await olga.keyboard.press('Enter'); // "No, go back"
    await waitVisible(olga, '#moderate-ask');
    await olga.keyboard.press('Enter'); // asked again
    await waitVisible(olga, '#moderate-confirm');
    assert(frames(dan, 'kicked').length === 0, 'banned before the confirmation');
    await olga.keyboard.press('Shift+Tab');
    assert((await focusedId(olga)) === 'moderate-yes', `focus is on #${await focusedId(olga)}`);
    await olga.keyboard.press('Enter');
    await waitStatus(dan, 'Banned until');
    const kicked = frames(dan, 'kicked');
    assert(kicked.length === 1 && kicked[0].until > Date.now(), `kicked: ${JSON.stringify(kicked)}`);
    const when = await hhmm(dan, kicked[0].until);
    await waitStatus(dan, `Banned until ${when}`);
    await waitNotice(dan, `banned you from this chat until ${when}`);
    await waitSystem(ann, 'Dan was removed by an operator');
    await staysClosed(dan);
  });

  await check('the banned browser opening the page anew says until when, and does not knock', async () => {
    const again = await openPage(dan.context(), 'Dan, again', pageUrl('Dan'));
    await waitStatus(again, 'Banned until');
    await waitNotice(again, 'banned this browser');
    await staysClosed(again);
    assert(again.sockets.length === 0, `${again.sockets.length} socket(s)`);
  });

  await check('another browser at the banned address cannot be told why: it says it cannot reach the chat, and keeps trying', async () => {
    const zed = await person('Zed', `code=${encodeURIComponent(CODE)}`);
    try {
      await waitNotice(zed, 'Cannot reach the chat');
      await waitStatus(zed, 'Disconnected — retrying in');
      await waitSockets(zed, 2); // it tries again
      // Those already in stay in: the operator still talks to Ann.
      await olga.locator('#input').fill('Still here');
      await olga.locator('#input').press('Enter');
      await ann
        .locator('#messages .msg', { hasText: 'Still here' })
        .first()
        .waitFor({ state: 'visible', timeout: WAIT });
    } finally {
      await zed.context().close();
    }
  });

  await check('no script errors and no alert dialogs in any page', async () => {
    assert(pageErrors.length === 0, pageErrors.join('; '));
    assert(dialogs === 0, `${dialogs} dialog(s) fired`);
  });
} finally {
  clearTimeout(stop);
  await browser.close().catch(() => {});
}
finish();
