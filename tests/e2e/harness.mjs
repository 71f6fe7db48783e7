// Harness: what the browser scripts of this folder share: headless Chromium, and checks that
// each print one line, "ok - name (N ms)" or "FAIL - name" and why, then the count.

import { chromium } from 'playwright-core';

let passed = 0;
let failed = 0;

// Runs one check: a thrown error is its failure, said in its first lines, and the next check
// runs regardless.
export async function check(name, fn) {
  const started = Date.now();
  try {
    await fn();
    passed += 1;
    console.log(`ok - ${name} (${Date.now() - started} ms)`);
  } catch (err) {
    failed += 1;
    const msg = String((err && err.message) || err).split('\n').slice(0, 6).join('\n    ');
    console.log(`FAIL - ${name}\n    ${msg}`);
  }
}

export function assert(cond, message) {
  if (!cond) throw new Error(message);
}

// Prints "N passed, N failed" after `prefix` and exits: with 0 only if checks ran and none
// failed.
export function finish(prefix = '') {
  console.log(`${prefix}${passed} passed, ${failed} failed`);
  process.exit(failed === 0 && passed > 0 ? 0 : 1);
}

// Headless Chromium ($CHROMIUM, else Debian's), with `args` beyond the usual. Playwright gives
// it a fresh, temporary profile of its own and deletes it on close.
export function launch(args = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      ...args,
    ],
  });
}

// A hard stop for a whole script, should something hang outside a check's own deadline.
export function watchdog(script, seconds) {
  return setTimeout(() => {
    console.log(`FAIL - ${script} took more than ${seconds} s, giving up`);
    process.exit(1);
  }, seconds * 1000);
}
