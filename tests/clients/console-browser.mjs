#!/usr/bin/env node
// Drives Herald's live console (GET /) in Debian's Chromium through playwright-core, as a person
// would: types the key and the order id, clicks Subscribe, waits for the expected status.
//
//   node console-browser.mjs --url http://127.0.0.1:PORT/ --key KEY --order ORDERID \
//     --expect CONFIRMED [--customer CUSTOMERID] [--timeout-ms T] [--screenshot PATH] \
//     [--ready-file PATH] [--expect-step KIND] [--chromium /usr/bin/chromium]
//
// Exit 0 with `{"ok":true,"state":"...","events":[...rows...]}` once a row of #events shows the
// expected status. Else exit 1 with `{"error":..., "state":..., "errors":[...], "page":"<page
// text>"}`. `--ready-file` is written once the page says "subscribed" (the console has sent
// `subscribe` after `connection_ack`), so a test knows when to publish. The screenshot, if asked
// for, is taken in both cases. `--expect-step KIND` (e.g. `transitionChosen`) also waits for a
// row of that kind in the workflow steps table (#steps), and the output lists those rows as
// `steps`. Never downloads a browser: it runs the system Chromium.
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { launchChromium } from './chromium.mjs';

function emit(value) {
  process.stdout.write(JSON.stringify(value) + '\n');
}

let options;
try {
  ({ values: options } = parseArgs({
    options: {
      url: { type: 'string' },
      key: { type: 'string' },
      order: { type: 'string' },
      customer: { type: 'string' },
      expect: { type: 'string' },
      'timeout-ms': { type: 'string', default: '15000' },
      screenshot: { type: 'string' },
      'ready-file': { type: 'string' },
      'expect-step': { type: 'string' },
      chromium: { type: 'string', default: '/usr/bin/chromium' },
    },
    strict: true,
  }));
} catch (err) {
  emit({ error: `usage: ${err.message}` });
  process.exit(1);
}
if (!options.url || !options.key || !options.expect) {
  emit({ error: 'usage: --url, --key and --expect are required' });
  process.exit(1);
}

const timeoutMs = Number(options['timeout-ms']);
const deadline = Date.now() + timeoutMs;
const expected = options.expect.toUpperCase();
let browser;
let code = 1;

// The whole run is bounded, whatever hangs (the launch included).
const hardStop = setTimeout(() => {
  emit({ error: `hard timeout after ${timeoutMs + 10000} ms` });
  process.exit(1);
}, timeoutMs + 10000);

const remaining = () => Math.max(1, deadline - Date.now());

async function rows(page, table = '#events') {
  return page.$$eval(`${table} tr`, (trs) =>
    trs.map((tr) => Object.fromEntries(
      [...tr.querySelectorAll('td')].map((td) => [td.dataset.label || td.cellIndex, td.textContent]),
    )),
  );
}

try {
  browser = await launchChromium(options.chromium, remaining());
  const page = await browser.newPage();
  const consoleLines = [];
  page.on('console', (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`));
  page.on('pageerror', (err) => consoleLines.push(`pageerror: ${err.message}`));

  try {
    await page.goto(options.url, { timeout: remaining(), waitUntil: 'domcontentloaded' });
    await page.fill('#key', options.key, { timeout: remaining() });
    if (options.order) await page.fill('#orderId', options.order, { timeout: remaining() });
    if (options.customer) await page.fill('#customerId', options.customer, { timeout: remaining() });
    await page.click('#subscribe', { timeout: remaining() });

    if (options['ready-file']) {
      await page.waitForFunction(
        () => document.querySelector('#state')?.dataset.state === 'subscribed',
        null,
        { timeout: remaining() },
      );
      writeFileSync(options['ready-file'], 'ready\n');
    }

    await page.waitForFunction(
      (status) => [...document.querySelectorAll('#events td.status')]
        .some((td) => td.textContent.trim() === status),
      expected,
      { timeout: remaining(), polling: 100 },
    );
    if (options['expect-step']) {
      await page.waitForFunction(
        (kind) => [...document.querySelectorAll('#steps tr')].some((tr) => tr.dataset.kind === kind),
        options['expect-step'],
        { timeout: remaining(), polling: 100 },
      );
    }
    if (options.screenshot) await page.screenshot({ path: options.screenshot, fullPage: true });
    emit({ ok: true, state: await page.textContent('#state'), events: await rows(page), steps: await rows(page, '#steps') });
    code = 0;
  } catch (err) {
    let pageText = null, state = null, errors = [], events = [];
    try {
      pageText = await page.innerText('body', { timeout: 1000 });
      state = await page.textContent('#state', { timeout: 1000 });
      errors = await page.$$eval('#errors li', (lis) => lis.map((li) => li.textContent));
      events = await rows(page);
      if (options.screenshot) await page.screenshot({ path: options.screenshot, fullPage: true });
    } catch {}
    emit({
      error: `no ${expected} event shown: ${err.message.split('\n')[0]}`,
      state, errors, events, page: pageText, console: consoleLines,
    });
  }
} catch (err) {
  emit({ error: `browser failed: ${err.message.split('\n')[0]}` });
} finally {
  clearTimeout(hardStop);
  if (browser) await browser.close().catch(() => {});
}
process.stdout.write('', () => process.exit(code));
