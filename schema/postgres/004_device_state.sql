-- 004_device_state.sql — the statements the gateway runs around its COPY, as functions so the
-- gateway sends one short call through libpq pipeline mode and the SQL lives here.
--
-- Times cross the boundary as bigint ms since 1970 (the codec's unit); positions as the wire's
-- degrees x 1e7.

BEGIN;
SET LOCAL lock_timeout = '5s';
DO $$ BEGIN PERFORM pg_advisory_xact_lock(1635151975, 1); END $$;

-- Exact for every bigint that names a timestamptz. to_timestamp(float8) and interval * float8
-- both go through a double of microseconds, which is inexact past 2^53 us (year 2255): whole
-- UTC days go through date arithmetic instead (exact integers), and only the remainder, below
-- one day, through an interval. Truncating division: for negative ms both parts are negative
-- and still add up. IMMUTABLE although timestamptz + interval is STABLE: an interval without
-- days or months does not depend on TimeZone.
CREATE OR REPLACE FUNCTION telemetry.ms_to_timestamptz(ms bigint)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN ((date '1970-01-01' + (ms / 86400000)::integer)::timestamp AT TIME ZONE 'UTC')
       + (ms % 86400000) * interval '1 millisecond';

-- extract(epoch) is numeric (exact) since PostgreSQL 14; floor keeps ms before 1970 right.
CREATE OR REPLACE FUNCTION telemetry.timestamptz_to_ms(t timestamptz)
RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN floor(extract(epoch FROM t) * 1000)::bigint;

-- One row of public.device_state per array element, for the devices of one COPY batch, in the
-- batch's transaction. The caller guarantees each imei appears once (ON CONFLICT cannot
-- update a row twice in one statement) and equal array lengths (unnest pads with NULLs).
--   last_ts           GREATEST(old, new)
--   last_lon/lat and  follow the record with the greater ts: a newest-first device sends
--   last_received_at  older records later, and those must not move the last position back.
--                     Equal ts: the new values.
--   dedup             replaced by the new value (NULL keeps the old)
--   instance, shard   set to the caller's
-- Rows are taken in imei order, so two batches that share devices (a device moving between
-- instances) lock them in the same order and cannot deadlock. PL/pgSQL keeps the plan for
-- the session. Returns the rows written.
CREATE OR REPLACE FUNCTION telemetry.device_state_upsert(
    p_imei bigint[], p_last_ts_ms bigint[], p_received_ms bigint[], p_lon_e7 integer[],
    p_lat_e7 integer[], p_dedup bytea[], p_instance text, p_shard integer)
RETURNS integer
LANGUAGE plpgsql
AS $fn$
DECLARE
    n integer;
BEGIN
    INSERT INTO public.device_state AS s
        (imei, last_ts, last_lon, last_lat, last_received_at, instance, shard, dedup, updated_at)
    SELECT u.imei,
           telemetry.ms_to_timestamptz(u.ts_ms),
           u.lon_e7 / 1e7::double precision,
           u.lat_e7 / 1e7::double precision,
           telemetry.ms_to_timestamptz(u.rx_ms),
           p_instance, p_shard, u.dedup, pg_catalog.now()
    FROM unnest(p_imei, p_last_ts_ms, p_received_ms, p_lon_e7, p_lat_e7, p_dedup)
         AS u(imei, ts_ms, rx_ms, lon_e7, lat_e7, dedup)
    ORDER BY u.imei
    ON CONFLICT (imei) DO UPDATE SET
        last_ts = GREATEST(s.last_ts, EXCLUDED.last_ts),
        last_lon = CASE WHEN s.last_ts IS NULL OR EXCLUDED.last_ts >= s.last_ts
                        THEN EXCLUDED.last_lon ELSE s.last_lon END,
        last_lat = CASE WHEN s.last_ts IS NULL OR EXCLUDED.last_ts >= s.last_ts
                        THEN EXCLUDED.last_lat ELSE s.last_lat END,
        last_received_at = CASE WHEN s.last_ts IS NULL OR EXCLUDED.last_ts >= s.last_ts
                                THEN EXCLUDED.last_received_at ELSE s.last_received_at END,
        instance = EXCLUDED.instance,
        shard = EXCLUDED.shard,
        dedup = COALESCE(EXCLUDED.dedup, s.dedup),
        updated_at = EXCLUDED.updated_at;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;

-- What the owner shard loads when a device connects: always exactly one row, all NULL for a
-- device never seen. enabled is NULL when the device is not in public.devices.
CREATE OR REPLACE FUNCTION telemetry.device_state_get(p_imei bigint)
RETURNS TABLE (last_ts_ms bigint, dedup bytea, enabled boolean)
LANGUAGE sql STABLE
AS $fn$
    SELECT telemetry.timestamptz_to_ms(s.last_ts), s.dedup, d.enabled
    FROM (SELECT p_imei AS imei) k
    LEFT JOIN public.device_state s ON s.imei = k.imei
    LEFT JOIN public.devices d ON d.imei = k.imei
$fn$;

-- The same for many devices at once (reconnect storms, a batch whose COMMIT outcome is
-- unknown): one row per distinct element of p_imei, in imei order.
CREATE OR REPLACE FUNCTION telemetry.device_state_get_many(p_imei bigint[])
RETURNS TABLE (imei bigint, last_ts_ms bigint, dedup bytea, enabled boolean)
LANGUAGE sql STABLE
AS $fn$
    SELECT k.imei, telemetry.timestamptz_to_ms(s.last_ts), s.dedup, d.enabled
    FROM (SELECT DISTINCT x AS imei FROM unnest(p_imei) AS x WHERE x IS NOT NULL) k
    LEFT JOIN public.device_state s ON s.imei = k.imei
    LEFT JOIN public.devices d ON d.imei = k.imei
    ORDER BY k.imei
$fn$;

COMMIT;
