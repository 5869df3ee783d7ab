// route.js — the avlgate side of a Directus command: what a valid command is, and how a new
// one is routed to the gateway instance that holds the device. The same data model as
// `avlgate command send` (gateway/cli/command.c):
//
//   avlgate:dev:{<imei>}   HASH    instance, shard, epoch, conn   the owner shard, with a TTL
//   avlgate:cmd:<instance> STREAM  id, imei, payload        XADD MAXLEN ~ 100000
//
// <imei> is the canonical 15-digit IMEI inside braces (a Redis Cluster hash tag). Redis being
// down or the device offline is not an error: the row is committed, and the gateway's sweep
// and its on-connect fetch deliver it from PostgreSQL. No Directus import here: unit-tested
// with plain node (tests/directus/route.test.mjs).

export const IMEI_DIGITS = 15;
export const PAYLOAD_BYTES_MAX = 1024; // COMMAND_TEXT_BYTES_MAX
export const STREAM_LEN_MAX = 100000;
export const INSTANCE_BYTES_MAX = 128;

// The IMEI of a create payload as its canonical 15-digit string, or throws Error(reason).
// Directus gives a bigint column as a string; a JSON number is accepted when it is an exact
// 15-digit integer.
export function imeiOf(v) {
  let s;
  if (typeof v === 'string') s = v;
  else if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) s = String(v);
  else throw new Error('imei is required: the tracker\'s 15-digit IMEI');
  if (!/^[0-9]{15}$/.test(s)) throw new Error(`imei must be exactly 15 digits, got "${s.slice(0, 40)}"`);
  return s;
}

// The payload's text, or throws Error(reason): 1..1024 bytes of UTF-8, no NUL (PostgreSQL's
// text cannot hold one; a Codec 12 command is printable text).
export function payloadOf(v) {
  if (typeof v !== 'string') throw new Error('payload is required: the command text');
  const n = Buffer.byteLength(v, 'utf8');
  if (n === 0) throw new Error('payload is empty');
  if (n > PAYLOAD_BYTES_MAX) throw new Error(`payload is ${n} bytes, longer than ${PAYLOAD_BYTES_MAX}`);
  if (v.includes('\u0000')) throw new Error('payload contains a NUL character');
  return v;
}

export function registryKey(imei) {
  return `avlgate:dev:{${imei}}`;
}

// Routes the committed command row {id, imei, payload} through redis (an ioredis client).
// Returns {routed: true, instance, shard, entry} or {routed: false, why}; throws only on a
// Redis error (the caller logs it: the command still waits in PostgreSQL).
export async function routeCommand(redis, row) {
  const imei = String(row.imei).padStart(IMEI_DIGITS, '0');
  const owner = await redis.hgetall(registryKey(imei));
  const instance = owner && owner.instance;
  if (!instance || Buffer.byteLength(instance) > INSTANCE_BYTES_MAX) {
    return { routed: false, why: 'device not connected: delivered when it connects' };
  }
  const entry = await redis.xadd(`avlgate:cmd:${instance}`, 'MAXLEN', '~', String(STREAM_LEN_MAX),
    '*', 'id', String(row.id), 'imei', imei, 'payload', row.payload);
  return { routed: true, instance, shard: owner.shard, entry };
}
