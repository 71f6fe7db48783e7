// The browser page through a real TLS proxy (nginx or Caddy) in headless Chromium: loaded over
// https from the proxy, it opens its socket over wss:// to the same address, and two people
// see each other's messages.
//
// Run by tests/deploy.rs, which starts the server and the proxy:
//   CYBERCHAT_PAGE=https://localhost:PORT/client.html node tests/e2e/proxied.mjs
// The proxy's certificate is the test's own, so Chromium is told to ignore certificate errors.
// Output: one "ok - name" or "FAIL - name" line per check, then "N passed, N failed".
// Exit status: 0 only if every check passed.

import { assert, check, finish, launch, watchdog } from './harness.mjs';

const PAGE = process.env.CYBERCHAT_PAGE;
const WAIT = 10000; // through a proxy, on a busy machine: generous, never slept
const CONNECTED = 'Connected to Cyber Chat';
if (!PAGE) {
  console.log('FAIL - CYBERCHAT_PAGE is not set');
  process.exit(1);
}
const expectedSocket = new URL('/', PAGE);
expectedSocket.protocol = 'wss:';

const browser = await launch(['--ignore-certificate-errors']);
const stop = watchdog('proxied.mjs', 60);

// Each person in a browser context of their own, as two browsers; page.sockets lists the
// address of every WebSocket the page opened, and page.failures what it could not load.
async function open(name) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  page.sockets = [];
  page.failures = [];
  page.on('websocket', (ws) => page.sockets.push(ws.url()));
  page.on('requestfailed', (r) => page.failures.push(`${r.url()}: ${r.failure().errorText}`));
  page.on('pageerror', (e) => page.failures.push(`script error: ${e.message}`));
  await page.goto(`${PAGE}?username=${name}`);
  return page;
}
const connected = (page) =>
  page.waitForFunction((t) => document.title === t, CONNECTED, { timeout: WAIT });
async function say(page, text) {
  await page.locator('#input').fill(text);
  await page.locator('#input').press('Enter');
}
const sees = (page, author, text) =>
  page
    .locator('#messages .msg')
    .filter({ has: page.locator('.author', { hasText: author }) })
    .filter({ has: page.locator('.text', { hasText: text }) })
    .first()
    .waitFor({ state: 'visible', timeout: WAIT });

let ann;
let ben;
try {
  await check(`the page loads over https and connects (${PAGE})`, async () => {
    ann = await open('Ann');
    assert(ann.url().startsWith('https://'), `the page is at ${ann.url()}`);
    await connected(ann);
  });

  await check(`its socket is wss:// to the page's own address (${expectedSocket.href})`, async () => {
    assert(ann.sockets.length === 1, `sockets opened: ${JSON.stringify(ann.sockets)}`);
    const socket = new URL(ann.sockets[0]);
    assert(socket.protocol === 'wss:', `the socket is ${socket.href}`);
    assert(socket.host === expectedSocket.host, `the socket is ${socket.href}`);
  });

  await check("a second person connects, and each sees the other's message", async () => {
    ben = await open('Ben');
    await connected(ben);
    await say(ann, 'Hello Ben, over wss');
    await sees(ben, 'Ann', 'Hello Ben, over wss');
    await say(ben, 'Hello Ann, through the proxy');
    await sees(ann, 'Ben', 'Hello Ann, through the proxy');
  });

  await check('nothing failed to load and no script failed', async () => {
    const failures = [...ann.failures, ...ben.failures];
    assert(failures.length === 0, failures.join('; '));
  });
} finally {
  clearTimeout(stop);
  await browser.close();
}
finish();
