#!/usr/bin/env node
// Drives the operations (admin) view of Herald's console (GET /) in Debian's Chromium through
// playwright-core, as an operator would: types the key, opens the admin view, reads the queue
// figures, redrives the dead-letter queue (with its confirmation) and sees it empty, opens an
// endpoint's deliveries and retries one until a new attempt shows, reads the malformed events.
//
//   node console-admin.mjs --url http://127.0.0.1:PORT/ --key KEY --screenshots DIR \
//     [--dead-letters N] [--endpoint ID] [--malformed N] [--timeout-ms T] [--chromium PATH]
//
// With a non-admin key, `--refused` expects the page's refusal message instead and stops there.
// Exit 0 with `{"ok":true, ...what was seen...}`, else 1 with `{"error":..., "page":...}`.
// Screenshots of each panel go to DIR as console-<panel>.png. Never downloads a browser.
import { parseArgs } from 'node:util';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const emit = (value) => process.stdout.write(JSON.stringify(value) + '\n');

let options;
try {
  ({ values: options } = parseArgs({
    options: {
      url: { type: 'string' },
      key: { type: 'string' },
      screenshots: { type: 'string' },
      'dead-letters': { type: 'string', default: '0' },
      endpoint: { type: 'string' },
      malformed: { type: 'string', default: '0' },
      refused: { type: 'boolean', default: false },
      'timeout-ms': { type: 'string', default: '60000' },
      chromium: { type: 'string', default: '/usr/bin/chromium' },
    },
    strict: true,
  }));
} catch (err) {
  emit({ error: `usage: ${err.message}` });
  process.exit(1);
}
if (!options.url || !options.key) {
  emit({ error: 'usage: --url and --key are required' });
  process.exit(1);
}
const timeoutMs = Number(options['timeout-ms']);
const deadline = Date.now() + timeoutMs;
const remaining = () => Math.max(1, deadline - Date.now());
const hardStop = setTimeout(() => {
  emit({ error: `hard timeout after ${timeoutMs + 10000} ms` });
  process.exit(1);
}, timeoutMs + 10000);

// Waits until `probe()` (run in the page) is truthy, calling `poke()` (a refresh click) between
// tries; bounded by the run's deadline.
async function until(page, what, probe, arg, poke) {
  for (;;) {
    const value = await page.evaluate(probe, arg);
    if (value) return value;
    if (Date.now() >= deadline) throw new Error(`timed out waiting for ${what}`);
    if (poke) await poke();
    await page.waitForTimeout(250);
  }
}

async function shoot(page, selector, name) {
  if (!options.screenshots) return;
  await page.locator(selector).screenshot({ path: join(options.screenshots, `console-${name}.png`) });
}

const rows = (page, tbody) => page.$$eval(`${tbody} tr`, (trs) =>
  trs.map((tr) => Object.fromEntries([...tr.querySelectorAll('td')].map((td) => [td.dataset.label, td.textContent]))));

let browser;
let code = 1;
try {
  browser = await chromium.launch({
    executablePath: options.chromium, headless: true, timeout: remaining(),
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
  const consoleLines = [];
  page.on('console', (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`));
  page.on('pageerror', (err) => consoleLines.push(`pageerror: ${err.message}`));
  try {
    await page.goto(options.url, { timeout: remaining(), waitUntil: 'domcontentloaded' });
    await page.fill('#key', options.key, { timeout: remaining() });
    await page.click('#admin-open', { timeout: remaining() });
    if (options.refused) {
      const message = await until(page, 'the refusal', () => document.querySelector('#admin-error').textContent);
      emit({ ok: true, refused: message, adminHidden: await page.evaluate(() => document.querySelector('#admin').hidden) });
      code = 0;
    } else {
      const result = {};
      const deadLetters = Number(options['dead-letters']);
      // Queues: the figures, with the dead letters the test made.
      await until(page, `${deadLetters} dead letters in the figures`,
        (n) => document.querySelector('#q-dlq').textContent === String(n), deadLetters);
      result.queues = await page.evaluate(() => Object.fromEntries(
        ['q-visible', 'q-inflight', 'q-delayed', 'q-dlq', 'q-malformed'].map((id) => [id, document.getElementById(id).textContent])));
      await shoot(page, '#panel-queues', 'queues');

      // DLQ: listed, redriven after confirmation, then empty.
      await until(page, `${deadLetters} dead-letter rows`,
        (n) => document.querySelectorAll('#dlq tr').length === n, deadLetters, () => page.click('#dlq-refresh'));
      result.deadLetters = await rows(page, '#dlq');
      await shoot(page, '#panel-dlq', 'dlq');
      if (deadLetters > 0) {
        await page.click('#dlq-redrive', { timeout: remaining() });
        result.confirmation = await page.textContent('#dlq-confirm-text');
        await page.click('#dlq-confirm-yes', { timeout: remaining() });
        result.redriveNote = await until(page, 'the redrive result',
          () => (document.querySelector('#dlq-note').textContent.startsWith('Redrove') ? document.querySelector('#dlq-note').textContent : ''));
        await until(page, 'an empty dead-letter queue',
          () => document.querySelectorAll('#dlq tr').length === 0
            && document.querySelector('#q-dlq').textContent === '0', null, () => page.click('#dlq-refresh'));
        result.afterRedrive = await page.textContent('#dlq-note');
      }

      // Webhooks: the endpoint, its failed delivery, a manual retry that adds an attempt.
      if (options.endpoint) {
        const sel = `#endpoints tr[data-endpoint-id="${options.endpoint}"]`;
        await until(page, 'the endpoint row', (s) => !!document.querySelector(s), sel, () => page.click('#webhooks-refresh'));
        await page.click(`${sel} button`, { timeout: remaining() });
        const failed = await until(page, 'a failed delivery', () => {
          const tr = [...document.querySelectorAll('#deliveries tr')]
            .find((r) => r.querySelector('td[data-label="State"]').textContent === 'failed');
          return tr ? { id: tr.dataset.deliveryId, attempts: Number(tr.dataset.attempts) } : null;
        }, null, () => page.click('#deliveries-refresh'));
        result.failedDelivery = failed;
        await page.click(`#deliveries tr[data-delivery-id="${failed.id}"] button:not([data-action])`, { timeout: remaining() });
        await until(page, 'the attempt log', (n) => document.querySelectorAll('#attempts tr').length === n,
          failed.attempts);
        await page.click(`#deliveries tr[data-delivery-id="${failed.id}"] button[data-action="retry"]`, { timeout: remaining() });
        result.retryNote = await page.textContent('#deliveries-note');
        await until(page, 'a new attempt', (n) => document.querySelectorAll('#attempts tr').length > n,
          failed.attempts, () => page.click('#deliveries-refresh'));
        result.attempts = await rows(page, '#attempts');
        await shoot(page, '#panel-webhooks', 'webhooks');
      }

      // Malformed events.
      const malformed = Number(options.malformed);
      await until(page, `${malformed} malformed rows`,
        (n) => document.querySelectorAll('#malformed tr').length === n, malformed, () => page.click('#malformed-refresh'));
      result.malformed = await rows(page, '#malformed');
      await shoot(page, '#panel-malformed', 'malformed');
      if (options.screenshots) await page.screenshot({ path: join(options.screenshots, 'console-admin.png'), fullPage: true });
      result.errors = await page.evaluate(() => [...document.querySelectorAll('.note[data-kind="error"]')]
        .map((n) => n.textContent).filter(Boolean));
      emit({ ok: true, ...result, console: consoleLines });
      code = 0;
    }
  } catch (err) {
    let pageText = null;
    try { pageText = await page.innerText('body', { timeout: 1000 }); } catch {}
    emit({ error: err.message.split('\n')[0], page: pageText, console: consoleLines });
  }
} catch (err) {
  emit({ error: `browser failed: ${err.message.split('\n')[0]}` });
} finally {
  clearTimeout(hardStop);
  if (browser) await browser.close().catch(() => {});
}
process.stdout.write('', () => process.exit(code));
