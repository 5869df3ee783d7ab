// ui.mjs DIR IMEI REPLY SCREENSHOT — the operator's path through the Directus admin UI in a real
// browser (Debian's chromium, driven by playwright-core; no browser download): log in, open
// Commands, create one for IMEI (online, answering REPLY), and see it turn `answered` in the
// Commands list. SCREENSHOT keeps that list as the test's artefact.
import { baseUrl, call, check, credentials, requireDirectus } from './lib.mjs';

const [dir, imei, reply, shot] = process.argv.slice(2);
if (!shot) {
  console.error('usage: node ui.mjs DIR IMEI REPLY SCREENSHOT');
  process.exit(2);
}
const base = baseUrl(dir);
const cred = credentials(dir);
const { chromium } = requireDirectus('playwright-core');
const payload = `getinfo ui-${process.pid}`;

async function commandRow() { // as the admin, over REST: the row the UI created
  const r = await call(base, cred.ADMIN_TOKEN, 'GET',
    `/items/commands?filter[payload][_eq]=${encodeURIComponent(payload)}&fields=id,status,response,user_created`);
  return r.body.data;
}

const browser = await chromium.launch({ executablePath: process.env.AVLGATE_CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'] });
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  await page.goto(`${base}/admin/login`);
  await page.fill('input[type=email]', cred.OPERATOR_EMAIL);
  await page.fill('input[type=password]', cred.OPERATOR_PASSWORD);
  await page.click('button[type=submit]');
  await page.waitForURL(/\/admin\/(content|users|settings)/, { timeout: 30000 });
  check(true, 'the operator logged into the admin UI');

  await page.goto(`${base}/admin/content/commands`);
  await page.getByText('Commands', { exact: true }).first().waitFor({ timeout: 30000 });
  await page.goto(`${base}/admin/content/commands/+`);
  await page.locator('input[field=imei]').fill(imei);
  await page.locator('input[field=payload]').fill(payload);
  await page.keyboard.press('Control+s');
  // Ctrl+S saves and stays: the page becomes the new item's.
  await page.waitForURL(/\/admin\/content\/commands\/\d+$/, { timeout: 30000 });
  let rows = await commandRow();
  check(rows.length === 1, 'the command created in the UI is a row of public.commands');
  const id = rows[0].id;
  for (let i = 0; i < 300 && rows[0].status !== 'answered'; i++) {
    await new Promise((r) => setTimeout(r, 100));
    rows = await commandRow();
  }
  check(rows[0].status === 'answered' && rows[0].response === reply, `command ${id} was answered by the device (${rows[0].status})`);
  check(rows[0].user_created !== null, 'user_created names the operator');

  await page.goto(`${base}/admin/content/commands`);
  const row = page.locator('tr, .table-row').filter({ hasText: payload });
  await row.first().waitFor({ timeout: 30000 });
  const text = await row.first().innerText();
  check(text.includes('answered'), `the Commands list shows it as answered ("${text.replace(/\s+/g, ' ').slice(0, 80)}")`);
  await page.screenshot({ path: shot });
  await page.goto(`${base}/admin/content/commands/${id}`);
  await page.locator('textarea[field=response]').waitFor({ timeout: 30000 });
  check(await page.locator('textarea[field=response]').inputValue() === reply, 'its page shows the response');
} catch (e) {
  console.error(e.stack ?? e.message);
  process.exitCode = 1;
} finally {
  await browser.close();
}
