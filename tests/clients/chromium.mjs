// Debian's Chromium through playwright-core, launched as every browser test here needs it. Never
// downloads a browser.
import { chromium } from 'playwright-core';

// Flags as this machine needs them: no sandbox as root, and no background traffic to hosts a
// closed network refuses. playwright gives each launch a fresh, empty profile directory of its
// own (it refuses an explicit --user-data-dir) and deletes it on close.
export function launchChromium(executablePath, timeout) {
  return chromium.launch({
    executablePath,
    headless: true,
    timeout,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
}
