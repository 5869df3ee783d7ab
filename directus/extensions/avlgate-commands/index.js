// avlgate-commands — a Directus hook: the business plane's side of outbound commands.
//
//   filter commands.items.create  refuses a bad IMEI or payload (route.js) with a 400 before
//                                 the row exists;
//   action commands.items.create  after the commit, re-reads the row (the action's payload is
//                                 the client's input, not the stored row) and routes it to the
//                                 gateway instance that holds the device (route.js).
//
// Fire and forget: an action's errors are only logged by Directus. Redis down or the device
// offline leaves the row `pending` in PostgreSQL, where the gateway's sweep and on-connect
// fetch find it; a command is never lost because of this hook. One ioredis client per
// Directus process, from env.REDIS, made on first use; it never queues while Redis is down.
import Redis from 'ioredis';
import { InvalidPayloadError } from '@directus/errors';
import { imeiOf, payloadOf, routeCommand } from './route.js';

const COLLECTION = 'commands';

function redisClient(env) {
  const options = {
    lazyConnect: false,
    enableOfflineQueue: false, // Redis down: fail now, the row waits in PostgreSQL
    maxRetriesPerRequest: 0,
    connectTimeout: 2000,
    retryStrategy: (times) => Math.min(times * 200, 2000),
  };
  if (env.REDIS) return new Redis(env.REDIS, options);
  return new Redis({ host: env.REDIS_HOST ?? '127.0.0.1', port: Number(env.REDIS_PORT ?? 6379),
    password: env.REDIS_PASSWORD, ...options });
}

export default ({ filter, action }, { env, logger, database }) => {
  let redis = null;
  const counts = { refused: 0, routed: 0, offline: 0, redis_errors: 0 };

  filter(`${COLLECTION}.items.create`, (payload) => {
    try {
      return { ...payload, imei: imeiOf(payload.imei), payload: payloadOf(payload.payload) };
    } catch (e) {
      counts.refused++;
      logger.info(`avlgate-commands: refused a command (${e.message}); refused so far: ${counts.refused}`);
      throw new InvalidPayloadError({ reason: e.message });
    }
  });

  action(`${COLLECTION}.items.create`, async ({ key }) => {
    const row = await database(COLLECTION).select('id', 'imei', 'payload', 'status')
      .where({ id: key }).first();
    if (!row || row.status !== 'pending') return;
    try {
      redis ??= redisClient(env);
      const r = await routeCommand(redis, row);
      if (r.routed) {
        counts.routed++;
        logger.debug(`avlgate-commands: command ${row.id} routed to ${r.instance} shard ${r.shard}`);
      } else {
        counts.offline++;
        logger.debug(`avlgate-commands: command ${row.id}: ${r.why}`);
      }
    } catch (e) {
      counts.redis_errors++;
      logger.warn(`avlgate-commands: command ${row.id} not routed (redis: ${e.message}); it waits `
        + `in PostgreSQL for the gateway's sweep; redis errors so far: ${counts.redis_errors}`);
    }
  });
};
