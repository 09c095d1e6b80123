// The console in a real browser (issue 17): headless Chromium, driven by
// playwright-core, against the relay that tests/it/console.rs started on a
// scratch database. Run by that test (`cargo test --workspace --test it --
// console::a_browser`); it exits 0 when every check passed, and 1 with the
// failed check, the page's address and the start of its HTML otherwise.
//
// What it does, as an operator would: a stranger gets 401; log in through the
// form (a wrong token first); the overview's two targets and their lag; a
// target's page; the dead-letter list, filtered by an event glob; one dead
// letter's payload, headers and attempt history; select the filtered ones,
// replay them (the confirmation says how many), and see them delivered (the
// dead-letter count falls, no retry is left; the Rust side then reads the
// target's file); the "all matching" confirmation, cancelled; purge one after
// confirming; a POST without the CSRF token is refused (403); log out.
//
// Environment (set by the Rust test):
//   CONSOLE_URL              the console, e.g. http://127.0.0.1:9090
//   CONSOLE_TOKEN            the login token
//   CONSOLE_EXPECT           JSON: what the Rust side put in the database
//                            ({ targets, lagging, lag, dead, event, matching, other, other_matching })
//   CONSOLE_BROWSER_MODULES  the directory whose node_modules holds playwright-core
//                            (tests/setup.sh: <target>/console-browser)
//   CONSOLE_CHROMIUM         the browser (default /usr/bin/chromium, Debian's)
//   CONSOLE_SCREENSHOTS      if set, a directory to save the pages' PNGs in
//                            (1280x800; the test writes docs/console/)

import { createRequire } from 'node:module';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';

const started = Date.now();
let checks = 0;

function fail(message) {
  console.error(`browser: FAILED: ${message}`);
  process.exit(1);
}

function env(name) {
  const value = process.env[name];
  if (value === undefined || value === '') fail(`${name} is not set`);
  return value;
}

const base = env('CONSOLE_URL').replace(/\/$/, '');
const token = env('CONSOLE_TOKEN');
const expected = JSON.parse(env('CONSOLE_EXPECT'));
const modules = env('CONSOLE_BROWSER_MODULES');
const executablePath = process.env.CONSOLE_CHROMIUM || '/usr/bin/chromium';
const shots = process.env.CONSOLE_SCREENSHOTS || '';

let chromium;
try {
  ({ chromium } = createRequire(path.join(modules, 'package.json'))('playwright-core'));
} catch (e) {
  fail(
    `playwright-core is not installed under ${modules}/node_modules: run \`make setup\` ` +
      `(tests/setup.sh runs npm ci there from tests/console/package-lock.json) (${e.message})`,
  );
}
if (!existsSync(executablePath)) {
  fail(`${executablePath} is missing: run \`make setup\` (tests/setup.sh: apt-get install chromium)`);
}

class CheckFailed extends Error {}

function check(ok, what) {
  checks += 1;
  if (!ok) throw new CheckFailed(what);
}

function step(what) {
  console.log(`browser: ${((Date.now() - started) / 1000).toFixed(1)} s: ${what}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/// Reloads `page` until `probe()` returns something truthy (which it returns),
/// or fails after `timeout` ms with `what` and the last value seen.
async function until(page, what, probe, timeout = 60_000) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await probe();
    if (last && last.ok !== false) return last;
    if (Date.now() > deadline) {
      throw new CheckFailed(`timed out after ${timeout} ms waiting for ${what}; last seen: ${JSON.stringify(last)}`);
    }
    await sleep(250);
    await page.reload();
  }
}

async function shot(page, name) {
  if (!shots) return;
  mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, `${name}.png`) });
}

const text = async (page, selector) => ((await page.textContent(selector)) ?? '').trim();

/// The overview's rows, by target; the columns found by their headings.
async function overviewRows(page) {
  const rows = await page.$eval('#targets', (table) => {
    const headings = [...table.tHead.rows[0].cells].map((th) => th.textContent.trim());
    const cell = (tr, heading) => tr.cells[headings.indexOf(heading)]?.textContent.trim();
    return [...table.tBodies[0].rows].map((tr) => {
      const series = tr.querySelector('.chart[data-series]')?.dataset.series;
      const [at, delivered, failed] = series ? JSON.parse(series) : [[], [], []];
      const bucket = at.length > 1 ? at[1] - at[0] : 0; // seconds a point covers
      const sum = (xs) => xs.reduce((a, b) => a + b * bucket, 0);
      return {
        name: tr.dataset.target,
        state: tr.querySelector('.state')?.textContent.trim(),
        lag: Number(cell(tr, 'Lag')),
        retries: Number(cell(tr, 'Retries')),
        dead: Number(cell(tr, 'Dead letters')),
        // attempts in the chart's window (its points are per second)
        delivered: Math.round(sum(delivered)),
        failed: Math.round(sum(failed)),
        drawn: tr.querySelector('.chart canvas') !== null,
      };
    });
  });
  return Object.fromEntries(rows.map((r) => [r.name, r]));
}

/// Submits by clicking `selector` and waits for the page it leads to.
async function submit(page, selector) {
  const [response] = await Promise.all([page.waitForNavigation(), page.click(selector)]);
  return response;
}

async function main(page, context) {
  // Nothing for a stranger: no cookie, no token.
  step('a stranger gets 401');
  for (const p of ['/', '/dead-letters', '/relays', '/targets/audit']) {
    const res = await fetch(base + p, { redirect: 'manual' });
    const body = await res.text();
    check(res.status === 401, `GET ${p} without a session: ${res.status}, not 401`);
    check(!expected.targets.some((t) => body.includes(`data-target="${t}"`)), `GET ${p} without a session shows a target`);
  }

  step('log in through the form');
  let res = await page.goto(base + '/');
  check(res.status() === 401, `the console without a session answers ${res.status()}, not 401`);
  check(await page.isVisible('form[action="/login"] #token'), 'the login form is shown');
  await page.fill('#token', 'not-the-token-0123456789');
  res = await submit(page, 'form[action="/login"] button[type=submit]');
  check(res.status() === 401 && (await page.isVisible('#login-failed')), 'a wrong token is refused and said so');
  await page.fill('#token', token);
  await submit(page, 'form[action="/login"] button[type=submit]');
  check(new URL(page.url()).pathname === '/', `after login the browser is at ${page.url()}`);
  const cookie = (await context.cookies()).find((c) => c.name === 'outbox_console');
  check(cookie && cookie.httpOnly && cookie.sameSite === 'Strict', `the session cookie: ${JSON.stringify(cookie)}`);
  check(!(await page.evaluate(() => document.cookie)).includes('outbox_console'), 'scripts cannot read the session cookie');

  step('the overview: two targets and their lag');
  const rows = await until(page, 'both targets with their figures', async () => {
    const r = await overviewRows(page);
    const lagging = r[expected.lagging];
    const ok =
      Object.keys(r).sort().join() === [...expected.targets].sort().join() &&
      lagging?.lag === expected.lag &&
      lagging?.state === 'cannot start' &&
      r.audit?.dead === expected.dead &&
      r.audit?.state === 'running' &&
      // the chart: each first attempt failed, none delivered yet
      r.audit?.failed === expected.dead &&
      r.audit?.delivered === 0;
    return { ok, r };
  });
  check(rows.r.audit.lag === 0, `audit delivered or dead-lettered everything: lag ${rows.r.audit.lag}`);
  check(Object.values(rows.r).every((r) => r.drawn), 'a chart is drawn in every row');
  check(
    (await text(page, `tr[data-target="${expected.lagging}"] .detail`)).includes('cannot open'),
    'the target that cannot start says why',
  );
  await shot(page, 'overview');

  step("a target's page");
  await submit(page, '#targets a[href="/targets/audit"]');
  check((await text(page, 'h1')) === 'Target audit', `the target page's title: ${await text(page, 'h1')}`);
  const recent = await page.$$eval('main table:last-of-type tbody tr', (trs) => trs.length);
  check(recent === expected.dead, `recent errors at audit: ${recent} rows`);
  await shot(page, 'target');

  step('the dead-letter list');
  await submit(page, 'header nav a[href="/dead-letters"]');
  check(Number(await text(page, '#count')) === expected.dead, `dead letters: ${await text(page, '#count')}`);
  check((await page.$$('#dead-letters tbody tr[data-seq]')).length === expected.dead, 'one row each');

  step(`filtered by event ${expected.event}`);
  await page.fill('#filter input[name=event]', expected.event);
  await submit(page, '#filter button[type=submit]');
  check(new URL(page.url()).searchParams.get('event') === expected.event, `the filter is in the address: ${page.url()}`);
  check(Number(await text(page, '#count')) === expected.matching, `matching: ${await text(page, '#count')}`);
  const events = await page.$$eval('#dead-letters tbody tr[data-seq] td.event', (tds) => tds.map((t) => t.textContent.trim()));
  check(events.length === expected.matching && events.every((e) => e.startsWith(expected.event.replace('*', ''))), `events: ${events}`);
  check((await text(page, '#replay-matching')).includes(`${expected.matching}`), 'the "all matching" button says how many');

  step('one dead letter: payload, headers, attempts');
  const listUrl = page.url();
  await submit(page, '#dead-letters tbody tr[data-seq] a');
  check((await text(page, 'h1')).startsWith('Dead letter'), `the dead letter's title: ${await text(page, 'h1')}`);
  const payload = await text(page, '#payload');
  check(payload.includes('"order"') && payload.includes('\n'), `the payload, as pretty JSON: ${payload}`);
  const history = await page.$$eval('#history tbody tr', (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent.trim())));
  check(history.length === 1 && history[0][0] === '1' && history[0][2].includes('flaky: attempt 1'), `history: ${JSON.stringify(history)}`);
  const headers = await text(page, '#headers');
  check(headers.includes('<b>not bold</b>'), `a header's HTML is shown as text: ${headers}`);
  check((await page.$$('#headers b')).length === 0, "a header's HTML is not markup");
  await shot(page, 'dead-letter');
  await page.goto(listUrl);

  step('select the filtered ones and replay them');
  for (const box of await page.$$('#dead-letters input[name=pick]')) await box.check();
  await shot(page, 'dead-letters');
  await submit(page, '#replay-selected');
  check(
    (await text(page, 'h1')) === `Replay ${expected.matching} dead letters?`,
    `the confirmation: ${await text(page, 'h1')}`,
  );
  check((await text(page, '#confirm-counts')) === `audit: ${expected.matching}`, `per target: ${await text(page, '#confirm-counts')}`);
  await shot(page, 'confirm');
  await submit(page, '#confirm-button');
  check(
    (await text(page, '#done')) === `replayed ${expected.matching} dead letters`,
    `after replay: ${await page.textContent('#done').catch(() => '(no #done)')}`,
  );
  check(new URL(page.url()).searchParams.get('event') === expected.event, 'the list keeps its filter after a replay');
  check(Number(await text(page, '#count')) === 0, 'none of the replayed ones is dead any more');

  step('the replayed ones delivered: fewer dead letters, no retry left');
  await page.goto(base + '/');
  await until(page, 'the replayed dead letters delivered', async () => {
    const r = (await overviewRows(page)).audit;
    return {
      ok: r?.dead === expected.dead - expected.matching && r?.retries === 0 && r?.delivered === expected.matching,
      audit: r,
    };
  });
  console.log('browser: replayed and delivered');

  step('"all matching" says how many; cancel changes nothing');
  await page.goto(`${base}/dead-letters?event=${encodeURIComponent(expected.other)}`);
  check(Number(await text(page, '#count')) === expected.other_matching, `matching ${expected.other}: ${await text(page, '#count')}`);
  await submit(page, '#replay-matching');
  check(
    (await text(page, 'h1')) === `Replay ${expected.other_matching} dead letters?`,
    `the confirmation: ${await text(page, 'h1')}`,
  );
  await submit(page, '#confirm a[href="/dead-letters"]');
  check(Number(await text(page, '#count')) === expected.dead - expected.matching, 'cancelled: nothing replayed');

  step('purge one after confirming');
  await submit(page, '#dead-letters tbody tr[data-seq] a');
  await submit(page, '#purge-one');
  check((await text(page, 'h1')) === 'Purge 1 dead letters?', `the confirmation: ${await text(page, 'h1')}`);
  check(await page.$eval('#confirm-button', (b) => b.classList.contains('danger')), 'purging is shown as dangerous');
  await submit(page, '#confirm-button');
  check((await text(page, '#done')) === 'purged 1 dead letters', `after purge: ${await text(page, '#done')}`);
  const left = expected.dead - expected.matching - 1;
  check(Number(await text(page, '#count')) === left, `left: ${await text(page, '#count')}`);

  step('a change without the CSRF token is refused');
  // page.request carries the browser's session cookie, but no form token.
  for (const form of [
    { op: 'purge-matching', confirm: 'yes' },
    { op: 'purge-matching', confirm: 'yes', csrf: '0'.repeat(64) },
  ]) {
    const r = await page.request.post(base + '/dead-letters/act', { form, maxRedirects: 0 });
    check(r.status() === 403, `POST /dead-letters/act ${JSON.stringify(form)} with the session: ${r.status()}, not 403`);
  }
  const stranger = await fetch(base + '/dead-letters/act', {
    method: 'POST',
    body: new URLSearchParams({ op: 'purge-matching', confirm: 'yes' }),
    redirect: 'manual',
  });
  check(stranger.status === 401, `POST without a session: ${stranger.status}, not 401`);
  await page.reload();
  check(Number(await text(page, '#count')) === left, 'nothing was purged by the refused requests');

  step('a script with the bearer token');
  const bearer = await fetch(base + '/relays', { headers: { authorization: `Bearer ${token}` } });
  check(bearer.status === 200 && (await bearer.text()).includes('audit'), `GET /relays with the bearer token: ${bearer.status}`);

  step('log out');
  await submit(page, 'header form.logout button');
  check(new URL(page.url()).pathname === '/login', `after logout: ${page.url()}`);
  res = await page.goto(base + '/dead-letters');
  check(res.status() === 401, `the old session after logout: ${res.status()}`);
}

const browser = await chromium.launch({ executablePath, args: ['--no-sandbox'], headless: true });
let code = 0;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  page.setDefaultNavigationTimeout(30_000);
  const dialogs = [];
  page.on('dialog', (d) => {
    dialogs.push(d.message());
    d.dismiss().catch(() => {});
  });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  try {
    await main(page, context);
    check(dialogs.length === 0, `a page opened dialogs: ${dialogs}`);
    check(pageErrors.length === 0, `script errors on the pages: ${pageErrors}`);
    console.log(`browser: ok, ${checks} checks in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (e) {
    code = 1;
    console.error(`browser: FAILED: ${e instanceof CheckFailed ? e.message : e.stack}`);
    console.error(`browser: at ${page.url()}`);
    const html = await page.content().catch(() => '');
    console.error(`browser: the page starts:\n${html.slice(0, 3000)}`);
  }
} finally {
  await browser.close();
}
process.exit(code);
