// route.test.mjs — the hook's rules (directus/extensions/avlgate-commands/route.js) with
// node:test, and its routing against the real Redis of $AVLGATE_TEST_REDIS (HOST:PORT; run.sh
// starts one): the same keys and stream entries as `avlgate command send`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { imeiOf, payloadOf, registryKey, routeCommand } from '../../directus/extensions/avlgate-commands/route.js';
import { requireDirectus } from './lib.mjs';

test('imeiOf takes exactly 15 digits, as a string or an exact number', () => {
  assert.equal(imeiOf('352093081452251'), '352093081452251');
  assert.equal(imeiOf(352093081452251), '352093081452251');
  assert.equal(imeiOf('000000000000001'), '000000000000001');
  for (const bad of ['35209308145225', '3520930814522510', '35209308145225x', ' 352093081452251', '', '-35209308145225']) {
    assert.throws(() => imeiOf(bad), /exactly 15 digits/, bad);
  }
  for (const bad of [undefined, null, 3.5, -1, {}, [], true]) assert.throws(() => imeiOf(bad), /imei/);
  assert.throws(() => imeiOf(35209308145225), /exactly 15 digits/);
});

test('payloadOf takes 1..1024 bytes of UTF-8 without NUL', () => {
  assert.equal(payloadOf('getinfo'), 'getinfo');
  assert.equal(payloadOf('x'.repeat(1024)), 'x'.repeat(1024));
  assert.throws(() => payloadOf(''), /payload is empty/);
  assert.throws(() => payloadOf('x'.repeat(1025)), /payload is 1025 bytes/);
  assert.equal(payloadOf('é'.repeat(512)), 'é'.repeat(512)); // 1024 bytes
  assert.throws(() => payloadOf('é'.repeat(513)), /payload is 1026 bytes/);
  assert.throws(() => payloadOf('get\u0000info'), /NUL/);
  for (const bad of [undefined, null, 12, {}]) assert.throws(() => payloadOf(bad), /payload is required/);
});

test('routeCommand: registry hit -> XADD to the owner instance; miss -> not routed', async (t) => {
  const addr = process.env.AVLGATE_TEST_REDIS;
  if (!addr) { t.skip('AVLGATE_TEST_REDIS not set (tests/directus/run.sh sets it)'); return; }
  const Redis = requireDirectus('ioredis');
  const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];
  const redis = new Redis({ host, port });
  try {
    const imei = '356307042441099';
    assert.equal(registryKey(imei), 'avlgate:dev:{356307042441099}');
    await redis.del(registryKey(imei), 'avlgate:cmd:gw-route-test');
    const miss = await routeCommand(redis, { id: 7, imei, payload: 'getinfo' });
    assert.deepEqual(miss, { routed: false, why: 'device not connected: delivered when it connects' });
    await redis.hset(registryKey(imei), 'instance', 'gw-route-test', 'shard', '1', 'epoch', '1');
    // the bigint column as pg gives it, a string; a short one is zero-padded to 15 digits
    const hit = await routeCommand(redis, { id: 8, imei, payload: 'getinfo' });
    assert.equal(hit.routed, true);
    assert.equal(hit.instance, 'gw-route-test');
    assert.equal(hit.shard, '1');
    const entries = await redis.xrange('avlgate:cmd:gw-route-test', '-', '+');
    assert.equal(entries.length, 1);
    assert.deepEqual(entries[0][1], ['id', '8', 'imei', imei, 'payload', 'getinfo']);
    await redis.hset(registryKey('000000000000042'), 'instance', 'gw-route-test');
    await routeCommand(redis, { id: 9, imei: 42, payload: 'x' });
    const again = await redis.xrange('avlgate:cmd:gw-route-test', '-', '+');
    assert.deepEqual(again[1][1], ['id', '9', 'imei', '000000000000042', 'payload', 'x']);
    await redis.del(registryKey(imei), registryKey('000000000000042'), 'avlgate:cmd:gw-route-test');
  } finally {
    redis.disconnect();
  }
});
