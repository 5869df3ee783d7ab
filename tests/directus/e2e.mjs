// e2e.mjs DIR PG_CONNINFO REPLY IMEI... — a real Directus (DIR, started by dstack.sh) in front of
// a running gateway (--directus-bus) whose devices (loadgen, answering REPLY) are online:
//   - the operator logs in over REST and subscribes to `commands` over the WebSocket;
//   - 100 commands, created one at a time round-robin over the IMEIs: each device gets its
//     Codec 12 frame and answers; the subscriber sees status `answered` with REPLY; the time
//     from the create's response to that update is measured (p50/p99 printed and written to
//     DIR/e2e-latency.json);
//   - the filter hook refuses a bad IMEI or payload with a 400 before a row exists;
//   - the operator cannot write status/response (create or update) nor read another user.
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { baseUrl, call, check, credentials, login, percentile, requireDirectus, subscribe } from './lib.mjs';

// --one: a single command, nothing else (after a restart of Directus).
const one = process.argv[2] === '--one';
const [dir, conninfo, reply, ...imeis] = process.argv.slice(one ? 3 : 2);
if (!dir || !conninfo || !reply || imeis.length === 0) {
  console.error('usage: node e2e.mjs [--one] DIR PG_CONNINFO REPLY IMEI...');
  process.exit(2);
}
const N = one ? 1 : Number(process.env.AVLGATE_DIRECTUS_COMMANDS ?? 100);
const base = baseUrl(dir);
const cred = credentials(dir);
const { Client } = requireDirectus('pg');
const pg = new Client({ ...Object.fromEntries(conninfo.split(/\s+/)
  .map((kv) => kv.split('=')).map(([k, v]) => [k === 'dbname' ? 'database' : k, v])) });

async function rows() {
  return Number((await pg.query('SELECT count(*) FROM public.commands')).rows[0].count);
}

async function commandsAnswered(token, sub) {
  const latencies = [];
  for (let i = 0; i < N; i++) {
    const imei = imeis[i % imeis.length];
    const created = await call(base, token, 'POST', '/items/commands', { imei, payload: 'getinfo' });
    const t0 = performance.now();
    if (created.status !== 200) throw new Error(`create: HTTP ${created.status} ${JSON.stringify(created.body)}`);
    const id = created.body.data.id;
    const m = await sub.waitFor((x) => x.event === 'update' && x.data.some((r) => r.id === id && r.status === 'answered'), 20000);
    const row = m.data.find((r) => r.id === id);
    if (row.response !== reply) throw new Error(`command ${id}: response ${JSON.stringify(row.response)}, want ${reply}`);
    latencies.push(m.at - t0);
  }
  return latencies.sort((a, b) => a - b);
}

async function refused(token, body, want) {
  const before = await rows();
  const r = await call(base, token, 'POST', '/items/commands', body);
  const message = JSON.stringify(r.body);
  check(r.status === 400 && message.includes(want), `create ${JSON.stringify(body).slice(0, 60)} refused with 400 "${want}"`);
  check(await rows() === before, 'no row was stored for it');
}

try {
  await pg.connect();
  const token = await login(base, cred.OPERATOR_EMAIL, cred.OPERATOR_PASSWORD);
  const sub = await subscribe(base, token, 'commands', ['id', 'status', 'response']);

  const lat = await commandsAnswered(token, sub);
  if (one) {
    check(true, `a command from the operator came back answered in ${lat[0].toFixed(1)} ms`);
    sub.close();
    await pg.end();
    process.exit(0);
  }
  const p50 = percentile(lat, 0.5), p99 = percentile(lat, 0.99);
  check(lat.length === N, `${N} commands created by the operator reached their device and came back answered over the WebSocket`);
  console.log(`create -> websocket answered: p50 ${p50.toFixed(1)} ms, p99 ${p99.toFixed(1)} ms, max ${lat[lat.length - 1].toFixed(1)} ms over ${N}`);
  writeFileSync(path.join(dir, 'e2e-latency.json'), JSON.stringify({ commands: N, p50_ms: p50, p99_ms: p99, max_ms: lat[lat.length - 1], latencies_ms: lat }));
  // Two writes per command (sent, then answered), each one bus event and `update`; the row is
  // re-read when the event is handled, so the first may already say answered. Directus gives no
  // promise per event (one run here saw 199 of 200), so: more updates than commands.
  const updates = sub.seen.filter((m) => m.event === 'update').length;
  check(updates > N, `the subscriber saw \`sent\` updates too (${updates} updates for ${N} commands)`);

  await refused(token, { imei: '35209308145225', payload: 'getinfo' }, 'imei must be exactly 15 digits');
  await refused(token, { imei: '35209308145225x', payload: 'getinfo' }, 'imei must be exactly 15 digits');
  await refused(token, { payload: 'getinfo' }, 'imei is required');
  await refused(token, { imei: imeis[0], payload: '' }, 'payload is empty');
  await refused(token, { imei: imeis[0], payload: 'x'.repeat(1025) }, 'payload is 1025 bytes');
  await refused(token, { imei: imeis[0], payload: 'é'.repeat(513) }, 'payload is 1026 bytes');
  const ok1024 = await call(base, token, 'POST', '/items/commands', { imei: imeis[0], payload: 'y'.repeat(1024) });
  check(ok1024.status === 200, 'a payload of exactly 1024 bytes is accepted');

  const before = await rows();
  const withStatus = await call(base, token, 'POST', '/items/commands', { imei: imeis[0], payload: 'getver', status: 'answered' });
  check(withStatus.status === 403, `the operator cannot create a command with a status (HTTP ${withStatus.status})`);
  const withResponse = await call(base, token, 'POST', '/items/commands', { imei: imeis[0], payload: 'getver', response: 'forged' });
  check(withResponse.status === 403, `the operator cannot create a command with a response (HTTP ${withResponse.status})`);
  check(await rows() === before, 'neither was stored');
  const patch = await call(base, token, 'PATCH', `/items/commands/${ok1024.body.data.id}`, { status: 'failed' });
  check(patch.status === 403, `the operator cannot update a command's status (HTTP ${patch.status})`);
  const admin = await call(base, cred.ADMIN_TOKEN, 'GET', `/users?filter[email][_eq]=${encodeURIComponent(cred.ADMIN_EMAIL)}&fields=id`);
  const other = await call(base, token, 'GET', `/users/${admin.body.data[0].id}`);
  check(other.status === 403, `the operator cannot read another directus_users row (HTTP ${other.status})`);
  const list = await call(base, token, 'GET', '/users?fields=id,email');
  check(list.status === 403 || (list.status === 200 && list.body.data.every((u) => u.email === cred.OPERATOR_EMAIL)),
    `the operator's list of directus_users holds no one else (HTTP ${list.status})`);
  const devices = await call(base, token, 'GET', '/items/device_state?fields=imei,last_ts&limit=-1');
  check(devices.status === 200 && devices.body.data.length >= imeis.length, `the operator reads device_state (${devices.body.data.length} rows)`);
  const dedup = await call(base, token, 'GET', '/items/device_state?fields=dedup&limit=1');
  check(dedup.status === 403, `but not its opaque dedup column (HTTP ${dedup.status})`);
  sub.close();
  await pg.end();
} catch (e) {
  console.error(e.stack ?? e.message);
  process.exit(1);
}
