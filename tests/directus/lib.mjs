// lib.mjs — what the Directus tests share: the packages of directus/ (ws, pg, playwright-core:
// resolved from directus/node_modules, the one lockfile), the credentials dstack.sh wrote and
// the REST call (directus/rest.mjs), login, and a WebSocket subscription. Assertions throw;
// each test file exits non-zero on one.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { call } from '../../directus/rest.mjs';

const top = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const requireDirectus = createRequire(path.join(top, 'directus/package.json'));

export { baseUrl, call, credentials } from '../../directus/rest.mjs';

export function check(cond, what) {
  if (!cond) throw new Error(`FAIL: ${what}`);
  console.log(`ok: ${what}`);
}


export async function login(base, email, password) {
  const r = await call(base, null, 'POST', '/auth/login', { email, password });
  if (r.status !== 200) throw new Error(`login ${email}: HTTP ${r.status} ${JSON.stringify(r.body)}`);
  return r.body.data.access_token;
}

// A subscription to a collection over Directus's WebSocket: events() yields every
// {event, data} message; waitFor(pred, ms) resolves with the first message pred accepts.
export async function subscribe(base, token, collection, fields) {
  const WebSocket = requireDirectus('ws');
  const ws = new WebSocket(base.replace(/^http/, 'ws') + '/websocket');
  const waiters = [];
  const seen = [];
  ws.on('message', (raw) => {
    const m = JSON.parse(raw.toString());
    if (m.type === 'ping') { ws.send(JSON.stringify({ type: 'pong' })); return; }
    const at = performance.now();
    seen.push({ ...m, at });
    for (let i = waiters.length - 1; i >= 0; i--) {
      if (waiters[i].pred(m)) { waiters[i].resolve({ ...m, at }); waiters.splice(i, 1); }
    }
  });
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  const waitFor = (pred, ms) => new Promise((resolve, reject) => {
    const old = seen.find(pred);
    if (old) { resolve(old); return; }
    const t = setTimeout(() => reject(new Error(`websocket: nothing matching in ${ms} ms`)), ms);
    waiters.push({ pred, resolve: (m) => { clearTimeout(t); resolve(m); } });
  });
  ws.send(JSON.stringify({ type: 'auth', access_token: token }));
  await waitFor((m) => m.type === 'auth' && m.status === 'ok', 10000);
  ws.send(JSON.stringify({ type: 'subscribe', collection, uid: 'sub', query: { fields } }));
  await waitFor((m) => m.type === 'subscription' && m.event === 'init', 10000);
  return { ws, waitFor, seen, close: () => ws.close() };
}

export function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)];
}
