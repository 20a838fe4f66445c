// The playground page at `/`, in headless Debian Chromium driven by playwright-core,
// against a real `anyaccel serve` with the tiny model. Run by scripts/test-browser.sh,
// which starts the servers and sets:
//   ANYACCEL_URL        the open server (required)
//   ANYACCEL_KEYED_URL  a server with --api-key ANYACCEL_TEST_KEY and --max-queue 1
//                       (the 401 and 429 cases; skipped without it)
//   CHROMIUM            the browser binary (default /usr/bin/chromium)
//   ARTIFACTS_DIR       where screenshots go (default target/browser-artifacts)
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const BASE = process.env.ANYACCEL_URL;
const KEYED = process.env.ANYACCEL_KEYED_URL;
const KEY = process.env.ANYACCEL_TEST_KEY;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.ARTIFACTS_DIR || resolve(here, '../../target/browser-artifacts');
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-quic',
];
const TIMEOUT = 60_000;

if (!BASE) throw new Error('set ANYACCEL_URL (scripts/test-browser.sh does)');

let context;
let profile;
let info;
let page; // the main page, shared by the tests on the open server, in order
const pageErrors = [];
const consoleErrors = [];
const foreignRequests = [];

function watch(p) {
  p.on('pageerror', (e) => pageErrors.push(String(e)));
  p.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  p.on('request', (r) => {
    const u = new URL(r.url());
    if (!['data:', 'blob:'].includes(u.protocol) && u.origin !== new URL(BASE).origin && (!KEYED || u.origin !== new URL(KEYED).origin)) {
      foreignRequests.push(r.url());
    }
  });
  p.setDefaultTimeout(TIMEOUT);
  return p;
}

async function newPage(url) {
  const p = watch(await context.newPage());
  await p.goto(url);
  await p.waitForFunction(() => !document.getElementById('info-model').textContent.includes('loading'));
  return p;
}

// Everything the page writes into #status, in order (some states last only milliseconds).
async function recordStatus(p) {
  await p.evaluate(() => {
    window.__statuses = [];
    window.__steps = [];
    const s = document.getElementById('status');
    const bar = document.getElementById('progress');
    new MutationObserver(() => window.__statuses.push(s.textContent)).observe(s, { childList: true, characterData: true, subtree: true });
    new MutationObserver(() => {
      const v = bar.getAttribute('aria-valuenow');
      if (v !== null) window.__steps.push([Number(v), Number(bar.getAttribute('aria-valuemax'))]);
    }).observe(bar, { attributes: true, attributeFilter: ['aria-valuenow'] });
  });
}

async function fill(p, fields) {
  for (const [id, value] of Object.entries(fields)) {
    const tag = await p.locator('#' + id).evaluate((e) => e.tagName);
    if (tag === 'SELECT') await p.selectOption('#' + id, String(value));
    else await p.fill('#' + id, String(value));
  }
}

async function setSeed(p, seed) {
  if (seed === null) await p.check('#seed-random');
  else {
    await p.check('#seed-fixed');
    await p.fill('#seed', String(seed));
  }
}

const galleryCount = (p) => p.locator('#gallery > li').count();

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  profile = mkdtempSync(join(tmpdir(), 'anyaccel-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport: { width: 1280, height: 900 },
    timeout: TIMEOUT,
  });
  info = await (await fetch(new URL('info', BASE))).json();
  page = await newPage(BASE);
});

after(async () => {
  await context?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

test('the page is served at / with a strict content security policy', async () => {
  const r = await fetch(BASE);
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /text\/html/);
  const csp = r.headers.get('content-security-policy');
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /connect-src 'self'/);
  const html = await r.text();
  assert.doesNotMatch(html, /<script src|<link rel="stylesheet"|https?:\/\//, 'no external assets');
});

test('header says which model, accelerator and pool; sizes and schedulers come from /info', async () => {
  assert.equal(await page.textContent('#info-model'), info.model);
  assert.match(await page.textContent('#info-accelerator'), new RegExp('^' + info.accelerator));
  assert.equal(await page.textContent('#info-pool'), info.pool);
  const sizes = await page.$$eval('#size option', (os) => os.map((o) => o.value));
  assert.deepEqual(sizes, info.sizes);
  const schedulers = await page.$$eval('#scheduler option', (os) => os.map((o) => o.value));
  assert.deepEqual(schedulers, info.schedulers);
  assert.equal(await page.inputValue('#scheduler'), info.defaults.scheduler);
  assert.equal(await page.inputValue('#steps'), String(info.defaults.steps));
  assert.equal(await page.getAttribute('#steps', 'max'), String(info.limits.max_steps));
  assert.equal(await page.isVisible('#img2img'), info.img2img);
  assert.equal(await page.isDisabled('#seed'), true, 'seed starts on random');
});

test('an invalid field shows the API\'s own message, naming the field', async () => {
  await fill(page, { prompt: 'a red fox', steps: '0', size: '64x64', n: 1 });
  // What the API says to the same request, for comparison.
  const api = await fetch(new URL('v1/jobs', BASE), {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt: 'a red fox', steps: 0, size: '64x64', n: 1, guidance_scale: info.defaults.guidance_scale, scheduler: info.defaults.scheduler }),
  });
  assert.equal(api.status, 400);
  const { error } = await api.json();
  assert.equal(error.param, 'steps');

  await page.click('#generate');
  await page.waitForSelector('#error:not([hidden])');
  assert.equal(await page.textContent('#error-message'), error.message);
  assert.match(error.message, /^steps: must be between 1 and \d+ \(got 0\)$/);
  assert.match(await page.textContent('#error'), /Field: steps/);
  assert.equal(await page.getAttribute('#error', 'role'), 'alert');
  assert.equal(await page.getAttribute('#steps', 'aria-invalid'), 'true');
  assert.equal(await page.textContent('#steps-error'), error.message);
  assert.match(await page.getAttribute('#steps', 'aria-describedby'), /steps-error/);
  assert.equal(await page.evaluate(() => document.activeElement.id), 'steps', 'focus moves to the field at fault');
  assert.equal(await galleryCount(page), 0);

  // A value the form would never offer: a size forced into the DOM.
  await page.fill('#steps', '2');
  assert.equal(await page.getAttribute('#steps', 'aria-invalid'), null, 'editing the field clears its error');
  await page.evaluate(() => {
    const o = document.createElement('option');
    o.value = '100x100';
    o.textContent = 'forged';
    document.getElementById('size').append(o);
  });
  await page.selectOption('#size', '100x100');
  await page.click('#generate');
  await page.waitForFunction(() => document.getElementById('size').getAttribute('aria-invalid') === 'true');
  const msg = await page.textContent('#error-message');
  assert.match(msg, /^size: size `100x100` is not offered; allowed: /);
  for (const s of info.sizes) assert.ok(msg.includes(s), `the message lists ${s}`);
  await page.evaluate(() => document.querySelector('#size option[value="100x100"]').remove());
});

test('generate shows queue position, per-step progress, and images of the chosen size', async () => {
  await fill(page, { prompt: 'a lighthouse at dusk, oil painting', negative_prompt: 'blurry', size: '128x128', steps: 150, n: 4, guidance_scale: 7 });
  await setSeed(page, 1234);
  await recordStatus(page);
  // Another client's job runs first, so this one visibly waits in the queue.
  const blocker = await (await fetch(new URL('v1/jobs', BASE), {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt: 'someone else', size: '64x64', steps: 150, n: 1 }),
  })).json();
  while ((await (await fetch(new URL('v1/jobs/' + blocker.id, BASE))).json()).status === 'queued') {
    await new Promise((r) => setTimeout(r, 10));
  }
  const posted = page.waitForResponse((r) => r.url().endsWith('/v1/jobs') && r.request().method() === 'POST');
  await page.click('#generate');
  const resp = await posted;
  assert.equal(resp.status(), 202);
  assert.equal(await page.isDisabled('#generate'), true);
  assert.equal(await page.isEnabled('#cancel'), true);
  await page.waitForSelector('#status.done', { timeout: 120_000 });

  const statuses = await page.evaluate(() => window.__statuses);
  const steps = await page.evaluate(() => window.__steps);
  assert.ok(statuses.some((s) => /^Queued: position 1 \(next in line/.test(s)), 'queue position shown: ' + statuses.join(' | '));
  assert.ok(statuses.some((s) => /^Running: step \d+ of 150/.test(s)), 'running announced: ' + statuses.join(' | '));
  assert.match(statuses.at(-1), /^Done: 4 images in [\d.]+ s/);
  const middle = steps.filter(([v, max]) => max === 150 && v > 0 && v < 150);
  assert.ok(middle.length >= 3, 'the bar moved through several steps: ' + JSON.stringify(steps.slice(0, 20)));
  const values = middle.map(([v]) => v);
  assert.deepEqual(values, [...values].sort((a, b) => a - b), 'progress only goes forward');
  assert.equal(await page.getAttribute('#progress', 'aria-valuenow'), '150');

  assert.equal(await page.evaluate(() => document.activeElement.id), 'generate', 'focus returns to Generate');
  assert.equal(await galleryCount(page), 4);
  const cards = await page.$$eval('#gallery > li', (lis) => lis.map((li) => {
    const img = li.querySelector('img');
    const a = li.querySelector('a.download');
    return {
      w: img.naturalWidth, h: img.naturalHeight, complete: img.complete, alt: img.alt, seed: img.dataset.seed,
      text: li.textContent, href: a.href, download: a.getAttribute('download'),
    };
  }));
  assert.deepEqual(cards.map((c) => c.seed).sort(), ['1234', '1235', '1236', '1237']);
  for (const c of cards) {
    assert.ok(c.complete);
    assert.equal(c.w, 128);
    assert.equal(c.h, 128);
    assert.match(c.alt, /lighthouse.*seed \d+/);
    assert.match(c.text, /Seed\s*\d+/);
    assert.match(c.text, /Size\s*128x128/);
    assert.match(c.text, /Steps\s*150/);
    assert.match(c.text, /Guidance\s*7/);
    assert.match(c.text, new RegExp('Scheduler\\s*' + info.defaults.scheduler));
    assert.match(c.text, /Negative\s*blurry/);
    assert.match(c.text, new RegExp('Served by\\s*' + info.accelerator + ' · ' + info.pool));
    assert.equal(c.download, `anyaccel-${c.seed}.png`);
    assert.match(c.href, /^blob:/);
  }
  // The download link saves a real PNG under its name.
  const downloading = page.waitForEvent('download');
  await page.locator('#gallery > li a.download').first().click();
  const download = await downloading;
  assert.equal(download.suggestedFilename(), cards[0].download);
  const saved = readFileSync(await download.path());
  assert.deepEqual([...saved.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  assert.equal(saved.readUInt32BE(16), 128, 'PNG width');
  assert.equal(saved.readUInt32BE(20), 128, 'PNG height');
});

test('the image is shown forming before the final image arrives', async () => {
  await fill(page, { prompt: 'a harbour at night', size: '128x128', steps: 150, n: 1 });
  const before = await galleryCount(page);
  await page.click('#generate');
  // A preview (every ~19 steps here) appears while the job runs, at the requested size.
  await page.waitForFunction(() => {
    const img = document.getElementById('live-image');
    return !document.getElementById('live').hidden && img.complete && img.naturalWidth > 0;
  }, null, { timeout: 120_000 });
  const live = await page.evaluate(() => ({
    w: document.getElementById('live-image').naturalWidth,
    h: document.getElementById('live-image').naturalHeight,
    alt: document.getElementById('live-image').alt,
    caption: document.getElementById('live-caption').textContent,
    done: document.getElementById('status').classList.contains('done'),
  }));
  assert.equal(live.done, false, 'the preview came before the result');
  assert.equal(live.w, 128);
  assert.equal(live.h, 128);
  assert.match(live.caption, /^Forming: step \d+ of 150$/);
  assert.match(live.alt, /preview after step \d+ of 150/);
  await page.waitForSelector('#status.done', { timeout: 120_000 });
  assert.equal(await page.evaluate(() => document.getElementById('live').hidden), true, 'the preview gives way to the result');
  assert.equal(await galleryCount(page), before + 1);
});

// Mean absolute difference of two gallery images' RGBA bytes, drawn through a canvas.
async function pixelDiff(a, b) {
  const pixels = (img) => img.evaluate((i) => {
    const c = document.createElement('canvas');
    c.width = i.naturalWidth;
    c.height = i.naturalHeight;
    const ctx = c.getContext('2d');
    ctx.drawImage(i, 0, 0);
    return [...ctx.getImageData(0, 0, c.width, c.height).data];
  });
  const [x, y] = [await pixels(a), await pixels(b)];
  if (x.length !== y.length) return Infinity;
  let sum = 0;
  for (let i = 0; i < x.length; i++) sum += Math.abs(x[i] - y[i]);
  return sum / x.length;
}

test('"reuse these settings" fills the form and reproduces the image', async () => {
  const card = page.locator('#gallery > li', { has: page.locator('img[data-seed="1236"]') });
  // Scramble the form first so the reuse has something to restore.
  await fill(page, { prompt: 'something else', negative_prompt: '', steps: 3, n: 2, size: '64x64' });
  await setSeed(page, null);
  await card.locator('button.reuse').click();
  assert.equal(await page.inputValue('#prompt'), 'a lighthouse at dusk, oil painting');
  assert.equal(await page.inputValue('#negative_prompt'), 'blurry');
  assert.equal(await page.inputValue('#size'), '128x128');
  assert.equal(await page.inputValue('#steps'), '150');
  assert.equal(await page.inputValue('#n'), '1');
  assert.equal(await page.isChecked('#seed-fixed'), true);
  assert.equal(await page.inputValue('#seed'), '1236');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'prompt');
  assert.match(await page.textContent('#status'), /seed 1236/);

  // Keyboard: Ctrl+Enter in the prompt generates.
  await page.keyboard.press('Control+Enter');
  await page.waitForFunction(() => document.querySelectorAll('#gallery > li').length === 5, null, { timeout: 120_000 });
  await page.waitForSelector('#status.done');
  const first = page.locator('#gallery > li').first();
  assert.equal(await first.locator('img').getAttribute('data-seed'), '1236');
  const diff = await pixelDiff(card.last().locator('img'), first.locator('img'));
  assert.ok(diff < 2, `the same seed and settings give the same image (mean abs diff ${diff})`);
});

test('cancel mid-run shows cancelled', async () => {
  await fill(page, { prompt: 'a slow one', size: '128x128', steps: 150, n: info.limits.max_images });
  await setSeed(page, null);
  const before = await galleryCount(page);
  const posted = page.waitForResponse((r) => r.url().endsWith('/v1/jobs') && r.request().method() === 'POST');
  await page.click('#generate');
  const job = await (await posted).json();
  await page.waitForFunction(() => Number(document.getElementById('progress').getAttribute('aria-valuenow')) >= 1, null, { polling: 10 });
  // Focus moved to Cancel when the job started; Enter presses it.
  assert.equal(await page.evaluate(() => document.activeElement.id), 'cancel');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => /^Cancelled/.test(document.getElementById('status').textContent));
  assert.equal(await galleryCount(page), before, 'nothing added to the gallery');
  assert.equal(await page.isEnabled('#generate'), true);
  assert.equal(await page.isDisabled('#cancel'), true);
  assert.equal(await page.textContent('#progress-text'), 'cancelled');
  const view = await (await fetch(new URL('v1/jobs/' + job.id, BASE))).json();
  assert.equal(view.status, 'cancelled');
  assert.ok(view.progress.step < view.progress.total, 'it stopped before the end');
});

test('img2img: an init image and the strength slider', async (t) => {
  if (!info.img2img) { t.skip('the model has no VAE encoder'); return; }
  // An init image: a 64x64 PNG from the API itself.
  const gen = await fetch(new URL('v1/images/generations', BASE), {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt: 'init', size: '64x64', steps: 2, seed: 7, response_format: 'b64_json' }),
  });
  assert.equal(gen.status, 200);
  const png = Buffer.from((await gen.json()).data[0].b64_json, 'base64');

  if (!(await page.locator('#img2img').evaluate((d) => d.open))) await page.click('#img2img summary');
  await page.setInputFiles('#image', { name: 'init.png', mimeType: 'image/png', buffer: png });
  await page.waitForSelector('#image-preview:not([hidden])');
  // The slider by keyboard: Home goes to its minimum, then up in 0.05 steps.
  await page.focus('#strength');
  await page.keyboard.press('Home');
  for (let i = 0; i < 9; i++) await page.keyboard.press('ArrowRight');
  assert.equal(await page.inputValue('#strength'), '0.5');
  assert.equal(await page.textContent('#strength-out'), '0.5');
  await fill(page, { prompt: 'the same, in watercolour', size: '64x64', steps: 10, n: 1 });
  await setSeed(page, 99);
  const posted = page.waitForRequest((r) => r.url().endsWith('/v1/jobs') && r.method() === 'POST');
  await page.click('#generate');
  const sent = (await posted).postDataJSON();
  assert.match(sent.image, /^data:image\/png;base64,/);
  assert.equal(sent.strength, 0.5);
  assert.equal(sent.seed, 99);
  await page.waitForSelector('#status.done');
  const text = await page.locator('#gallery > li').first().textContent();
  assert.match(text, /Strength\s*0\.5 \(img2img\)/);
  assert.equal(await page.locator('#gallery > li img').first().evaluate((i) => i.naturalWidth), 64);

  await page.click('#clear-image');
  assert.equal(await page.isHidden('#image-preview'), true);
});

test('screenshot of the finished page', async () => {
  // One more plain generation so the page ends on a finished run.
  await fill(page, { prompt: 'a lighthouse at dusk, oil painting', size: '128x128', steps: 30, n: 2 });
  await setSeed(page, 2024);
  await page.click('#generate');
  await page.waitForSelector('#status.done');
  await page.evaluate(() => document.activeElement.blur());
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(ARTIFACTS, 'playground.png'), fullPage: true });
});

test('readable on a phone: one column, no sideways scrolling', async () => {
  const phone = watch(await context.newPage());
  await phone.setViewportSize({ width: 375, height: 740 });
  await phone.goto(BASE);
  await phone.waitForFunction(() => !document.getElementById('info-model').textContent.includes('loading'));
  await fill(phone, { prompt: 'a lighthouse', size: '64x64', steps: 8, n: 2 });
  await phone.click('#generate');
  await phone.waitForSelector('#status.done');
  const layout = await phone.evaluate(() => {
    const f = document.getElementById('gen-form').getBoundingClientRect();
    const g = document.getElementById('gallery-section').getBoundingClientRect();
    return { scroll: document.documentElement.scrollWidth, width: window.innerWidth, formBottom: f.bottom, galleryTop: g.top, formWidth: f.width,
      button: document.getElementById('generate').getBoundingClientRect().height,
      font: parseFloat(getComputedStyle(document.getElementById('prompt')).fontSize) };
  });
  assert.ok(layout.scroll <= layout.width, `no horizontal overflow (${layout.scroll} > ${layout.width})`);
  assert.ok(layout.galleryTop >= layout.formBottom, 'single column: the gallery comes after the form');
  assert.ok(layout.formWidth > layout.width * 0.85, 'the form uses the width');
  assert.ok(layout.button >= 44, 'touch-sized buttons');
  assert.ok(layout.font >= 16, 'inputs do not make phones zoom');
  await phone.screenshot({ path: join(ARTIFACTS, 'playground-phone.png'), fullPage: true });
  await phone.close();
});

test('keyboard: skip link, labelled controls, logical focus order, visible focus', async () => {
  const p = watch(await context.newPage());
  await p.goto(BASE);
  await p.waitForFunction(() => !document.getElementById('info-model').textContent.includes('loading'));
  // Every form control has an accessible name.
  const unnamed = await p.$$eval('input, select, textarea, button', (els) => els
    .filter((e) => e.type !== 'hidden' && !e.closest('[hidden]'))
    .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby') && !(e.tagName === 'BUTTON' && e.textContent.trim()))
    .map((e) => e.id || e.outerHTML));
  assert.deepEqual(unnamed, []);

  const order = [];
  for (let i = 0; i < 25 && order.at(-1)?.id !== 'generate'; i++) {
    await p.keyboard.press('Tab');
    order.push(await p.evaluate(() => {
      const e = document.activeElement;
      const style = getComputedStyle(e);
      return { id: e.id || e.getAttribute('href') || e.className, outline: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2 };
    }));
  }
  const ids = order.map((o) => o.id);
  assert.equal(ids[0], '#prompt', 'the skip link comes first');
  for (const o of order) assert.ok(o.outline, `visible focus on ${o.id}`);
  const want = ['prompt', 'negative_prompt', 'size', 'n', 'steps', 'guidance_scale', 'scheduler', 'seed-random'];
  const seen = ids.filter((id) => want.includes(id));
  assert.deepEqual(seen, want, 'form controls in reading order: ' + ids.join(', '));

  assert.equal(ids.at(-1), 'generate', 'Generate is reachable by Tab: ' + ids.join(', '));

  // The skip link lands on the prompt.
  await p.goto(BASE);
  await p.keyboard.press('Tab');
  await p.keyboard.press('Enter');
  assert.equal(await p.evaluate(() => document.activeElement.id), 'prompt');
  await p.close();
});

test('401: the page asks for an API key, keeps it for the tab and sends it as a bearer token', { skip: !KEYED && 'no ANYACCEL_KEYED_URL' }, async () => {
  const p = await newPage(KEYED);
  assert.equal(await p.isHidden('#auth'), true, 'no key field until one is needed');
  await fill(p, { prompt: 'a locked door', size: '64x64', steps: 4, n: 1 });
  await p.click('#generate');
  await p.waitForSelector('#auth:not([hidden])');
  assert.equal(await p.evaluate(() => document.activeElement.id), 'api-key');
  assert.match(await p.textContent('#error'), /invalid_api_key/);
  assert.match(await p.textContent('#error-message'), /missing or invalid API key/);

  await p.fill('#api-key', KEY);
  assert.equal(await p.evaluate(() => sessionStorage.getItem('anyaccel.apiKey')), KEY);
  const events = p.waitForRequest((r) => r.url().includes('/events'));
  await p.click('#generate');
  assert.equal((await events).headers().authorization, 'Bearer ' + KEY, 'the event stream carries the key too');
  await p.waitForSelector('#status.done');
  assert.equal(await galleryCount(p), 1);
  assert.equal(await p.isHidden('#error'), true);

  // A reload in the same tab keeps the key; a new tab does not have it.
  await p.reload();
  await p.waitForSelector('#auth:not([hidden])');
  assert.equal(await p.inputValue('#api-key'), KEY);
  const other = await newPage(KEYED);
  assert.equal(await other.evaluate(() => sessionStorage.getItem('anyaccel.apiKey')), null);
  await other.close();
  await p.close();
});

test('429: a full queue shows the API\'s message and the retry time', { skip: !KEYED && 'no ANYACCEL_KEYED_URL' }, async () => {
  const auth = { Authorization: 'Bearer ' + KEY, 'Content-Type': 'application/json' };
  const submit = async (body) => {
    const r = await fetch(new URL('v1/jobs', KEYED), { method: 'POST', headers: auth, body: JSON.stringify(body) });
    assert.equal(r.status, 202, await r.clone().text());
    return (await r.json()).id;
  };
  const status = async (id) => (await (await fetch(new URL('v1/jobs/' + id, KEYED), { headers: auth })).json()).status;
  const p = await newPage(KEYED);
  await p.evaluate((k) => sessionStorage.setItem('anyaccel.apiKey', k), KEY);
  await fill(p, { prompt: 'one too many', size: '64x64', steps: 4, n: 1 });
  // The keyed server has a one-job queue: one job runs, one waits, the next is refused.
  const running = await submit({ prompt: 'busy', size: '128x128', steps: 150, n: info.limits.max_images });
  for (let i = 0; i < 400 && (await status(running)) === 'queued'; i++) await new Promise((r) => setTimeout(r, 10));
  const waiting = await submit({ prompt: 'waiting', size: '64x64', steps: 150, n: info.limits.max_images });
  try {
    const posted = p.waitForResponse((r) => r.url().endsWith('/v1/jobs') && r.request().method() === 'POST');
    await p.click('#generate');
    const resp = await posted;
    assert.equal(resp.status(), 429, 'the queue was full');
    const retry = resp.headers()['retry-after'];
    const { error } = await resp.json();
    await p.waitForSelector('#error:not([hidden])');
    assert.equal(await p.textContent('#error-message'), error.message);
    assert.match(await p.textContent('#error'), /The server is busy \(queue_full\)/);
    assert.match(await p.textContent('#error-retry'), new RegExp('^Retry after ' + retry + ' s\\.'));
    assert.equal(await p.isEnabled('#generate'), true);
    await p.screenshot({ path: join(ARTIFACTS, 'playground-429.png') });
    await p.close();
  } finally {
    for (const id of [waiting, running]) await fetch(new URL('v1/jobs/' + id, KEYED), { method: 'DELETE', headers: auth });
  }
});

test('no uncaught errors, no CSP violations, nothing fetched from elsewhere', () => {
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(consoleErrors.filter((m) => /Content Security Policy|Uncaught/i.test(m)), []);
  assert.deepEqual(foreignRequests, []);
});
