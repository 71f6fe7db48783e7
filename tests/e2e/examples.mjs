// Which parts of www/client.html work against a tutorial example (examples/stepN_*.rs)?
//
// Run by tests/examples.rs with the example's address:
//   CYBERCHAT_URL=ws://127.0.0.1:PORT/ node tests/e2e/examples.mjs
// It opens pages from disk (file://) as two or three people and tries each part of the page
// in turn, from the plainest (does it connect?) to the last step's (live cursors). It asserts
// nothing itself: it prints one line per part, `works - NAME` or `fails - NAME: why`, and the
// runner compares them with what examples/README.md says works at that step.
//
// CYBERCHAT_NOT_YET lists (one a line) the parts the runner expects not to work: those are
// given a short wait, since what works here works at once, and the run stays quick.

import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { launch } from './harness.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CLIENT = pathToFileURL(path.join(HERE, '..', '..', 'www', 'client.html')).href;
const SERVER = process.env.CYBERCHAT_URL || 'ws://127.0.0.1:1337/';
const WAIT = 5000; // what works here works at once: a part that takes longer does not work
const NOT_YET_WAIT = 1000;
const notYet = new Set((process.env.CYBERCHAT_NOT_YET || '').split('\n').filter(Boolean));
let wait = WAIT; // for the part being tried
const CONNECTED = 'Connected to Cyber Chat';

const browser = await launch();
const watchdog = setTimeout(() => {
  console.log('fails - the whole run: more than 60 s');
  process.exit(1);
}, 60000);

// Each person has a browser context of their own (own localStorage), like separate browsers.
async function open(name, params = {}) {
  const context = await browser.newContext({ viewport: { width: 900, height: 640 } });
  const page = await context.newPage();
  const query = new URLSearchParams({ server: SERVER, username: name, ...params });
  await page.goto(`${CLIENT}?${query}`);
  return page;
}

const until = (page, fn, arg) => page.waitForFunction(fn, arg, { timeout: wait });
const connected = (page) => until(page, (t) => document.title === t, CONNECTED);
const shows = (page, selector, text) =>
  page.locator(selector, { hasText: text }).first().waitFor({ state: 'attached', timeout: wait });
const people = (page, names) =>
  until(
    page,
    (expected) => {
      const shown = [...document.querySelectorAll('#users .user .name')].map((n) => n.textContent);
      return shown.length === expected.length && expected.every((n) => shown.includes(n));
    },
    names,
  );
async function say(page, text) {
  await page.locator('#input').fill(text);
  await page.locator('#input').press('Enter');
}

// Every part is tried even when an earlier one failed: a later step may still light it up.
// Only a page that never connected can do nothing at all (it sends nothing before a welcome).
let ada;
let bob;
let neverConnected = false;
async function part(name, fn) {
  if (neverConnected) {
    console.log(`fails - ${name}: the page never connected`);
    return;
  }
  wait = notYet.has(name) ? NOT_YET_WAIT : WAIT;
  try {
    await fn();
    console.log(`works - ${name}`);
  } catch (err) {
    const why = String((err && err.message) || err).split('\n')[0];
    console.log(`fails - ${name}: ${why}`);
  }
}

try {
  await part('connects (the heading says Connected)', async () => {
    ada = await open('Ada', { cursors: '1' });
    await connected(ada).catch(async () => {
      neverConnected = true;
      throw new Error(`the heading says "${await ada.title()}"`);
    });
  });
  await part('sends and shows messages, with their author', async () => {
    bob = await open('Bob', { cursors: '1' });
    await connected(bob);
    await say(ada, 'Hello Bob');
    await shows(bob, '#messages .msg', 'Hello Bob');
    await shows(bob, '#messages .msg .author', 'Ada');
  });
  await part('the people list shows who arrives', async () => {
    await people(ada, ['Ada', 'Bob']);
  });
  await part('@mentions are highlighted', async () => {
    await say(bob, 'hi @Ada');
    await shows(ada, '#messages .msg.mention', 'hi @Ada');
  });
  await part('renames from the name field', async () => {
    await bob.locator('#username').fill('Bobby');
    await bob.locator('#username').press('Enter');
    await shows(ada, '#messages .system', 'Bob is now known as Bobby');
  });
  await part('refusals are shown (a taken name)', async () => {
    await bob.locator('#username').fill('ada');
    await bob.locator('#username').press('Enter');
    await until(bob, () => document.getElementById('error').dataset.code === 'username_taken');
  });
  await part('joined and left lines', async () => {
    const carol = await open('Carol');
    await connected(carol);
    await shows(ada, '#messages .system', 'Carol has joined the chat');
    await carol.context().close();
    await shows(ada, '#messages .system', 'Carol has left the chat');
    await people(ada, ['Ada', 'Bobby']);
  });
  await part('"is typing…"', async () => {
    await bob.locator('#input').pressSequentially('typing', { delay: 5 });
    await until(ada, () => document.getElementById('typing').textContent === 'Bobby is typing…');
    await bob.locator('#input').fill('');
  });
  await part('history: a late arrival sees earlier messages', async () => {
    const late = await open('Dee');
    await connected(late);
    await shows(late, '#messages .msg', 'Hello Bob');
    await late.context().close();
  });
  await part('the channel list, and joining a channel', async () => {
    await ada.locator('#channel-input').fill('random');
    await ada.locator('#channel-input').press('Enter');
    await until(ada, () => document.getElementById('channel-title').textContent === '#random');
    await shows(bob, '#channels .channel', '#random');
    await shows(bob, '#messages .system', 'Ada has left the chat');
    await bob.locator('#channels .channel', { hasText: '#random' }).click();
    await until(bob, () => document.getElementById('channel-title').textContent === '#random');
    await people(ada, ['Ada', 'Bobby']);
  });
  await part('live cursors', async () => {
    await bob.mouse.move(450, 320);
    await bob.mouse.move(460, 330);
    await shows(ada, '#cursors .cursor .label', 'Bobby');
  });
} finally {
  clearTimeout(watchdog);
  await browser.close();
}
