#!/usr/bin/env node
// A real browser `EventSource` on one of Herald's Server-Sent Events routes, in Debian's Chromium
// through playwright-core: the page (same origin, at /healthz) opens `new EventSource(URL)` and
// lets the browser do the rest, reconnection with `Last-Event-ID` included.
//
//   node sse-browser.mjs --url http://H/v1/events/stream?token=T --count N [--out FILE]
//     [--timeout-ms T] [--chromium /usr/bin/chromium]
//
// Prints one JSON line per event, `{"id", "event", "data": <parsed>, "opens", "reconnected"}`
// (`opens`: how many times the stream had opened when it came; `reconnected`: after the first),
// also appended to --out as it arrives (a test polls it), and exits 0 after N events. Else exit 1
// with `{"error": ...}`. An `event: error` frame from Herald is printed as `{"serverError": ..}`
// and fails the run. Never downloads a browser.
import { appendFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { launchChromium } from './chromium.mjs';

function emit(value) {
  const line = JSON.stringify(value) + '\n';
  process.stdout.write(line);
  if (options?.out) appendFileSync(options.out, line);
}

let options;
try {
  ({ values: options } = parseArgs({
    options: {
      url: { type: 'string' },
      count: { type: 'string', default: '1' },
      out: { type: 'string' },
      'timeout-ms': { type: 'string', default: '20000' },
      chromium: { type: 'string', default: '/usr/bin/chromium' },
    },
    strict: true,
  }));
} catch (err) {
  emit({ error: `usage: ${err.message}` });
  process.exit(1);
}
if (!options.url) {
  emit({ error: 'usage: --url is required' });
  process.exit(1);
}

const timeoutMs = Number(options['timeout-ms']);
const count = Number(options.count);
const deadline = Date.now() + timeoutMs;
let browser;
let code = 1;

const hardStop = setTimeout(() => {
  emit({ error: `hard timeout after ${timeoutMs + 10000} ms` });
  process.exit(1);
}, timeoutMs + 10000);

try {
  browser = await launchChromium(options.chromium, Math.max(1, deadline - Date.now()));
  const page = await browser.newPage();
  await page.goto(new URL('/healthz', options.url).href, { waitUntil: 'domcontentloaded' });
  await page.evaluate((url) => {
    window.__sse = { events: [], opens: 0, serverErrors: [] };
    const source = new EventSource(url);
    source.onopen = () => { window.__sse.opens += 1; };
    const onEvent = (e) => window.__sse.events.push({
      id: e.lastEventId, event: e.type, data: JSON.parse(e.data), opens: window.__sse.opens,
    });
    for (const type of ['order.accepted', 'order.confirmed', 'order.preparing', 'order.shipped',
      'order.delivered', 'order.cancelled', 'order.rejected']) {
      source.addEventListener(type, onEvent);
    }
    // Herald's `event: error` frames arrive as MessageEvents with data; connection errors as
    // plain Events (the browser then reconnects on its own).
    source.addEventListener('error', (e) => { if (e.data) window.__sse.serverErrors.push(e.data); });
  }, options.url);
  let printed = 0;
  while (printed < count) {
    if (Date.now() > deadline) throw new Error(`only ${printed} of ${count} events in time`);
    const state = await page.evaluate(() => window.__sse);
    if (state.serverErrors.length) {
      emit({ serverError: state.serverErrors[0] });
      throw new Error('the server ended the stream with an error');
    }
    for (const e of state.events.slice(printed)) {
      emit({ ...e, reconnected: e.opens > 1 });
    }
    printed = state.events.length;
    await new Promise((r) => setTimeout(r, 50));
  }
  code = 0;
} catch (err) {
  emit({ error: `browser failed: ${err.message.split('\n')[0]}` });
} finally {
  clearTimeout(hardStop);
  if (browser) await browser.close().catch(() => {});
}
process.stdout.write('', () => process.exit(code));
