-- 007_device_owner.sql — who may write a device's rows: exactly once across gateway instances.
--
-- A device whose connection died silently reconnects, perhaps through a load balancer to
-- another instance (B), while the old one (A) may still hold a batch of its rows, or COMMIT it
-- any moment. B's duplicate window comes from device_state; if B read it before A's COMMIT, B
-- would store the device's re-sent records again. No timing closes that; the database does:
--
--   owner   device_state.owner is a token from telemetry.device_owner_seq. A shard takes the
--           device over when its state is loaded (telemetry.device_state_claim): a new token,
--           unless the row still holds the token the shard's own uncommitted batches of the
--           device carry (then nothing changed hands and nothing is written).
--   fence   every batch writes each device's row only if its owner is still the token the batch
--           carries for it (telemetry.device_state_upsert_owned); otherwise the statement fails
--           with SQLSTATE 23AV0 and nothing of the transaction is stored. The gateway retries
--           the batch one packet per transaction, so only the moved device's packets are
--           refused (never acknowledged; the device re-sends them to where it is now).
--   order   both statements lock the device's row. If A's batch locked it first, B's claim
--           waits for A's COMMIT and then reads A's window: B drops the re-sent records as
--           duplicates. If B's claim came first, A's batch fails its fence and stores nothing:
--           the records are stored once, by B. Either way once.
--
-- One transaction, idempotent, safe to re-apply while gateways run; the ADD COLUMN (catalog
-- only, nullable, no default) takes ACCESS EXCLUSIVE on public.device_state once per database
-- (below).

BEGIN;
SET LOCAL lock_timeout = '5s';
DO $$ BEGIN PERFORM pg_advisory_xact_lock(1635151975, 1); END $$;

-- ADD COLUMN IF NOT EXISTS takes ACCESS EXCLUSIVE on device_state before it notices the column
-- exists, and every state load and batch would queue behind it: so the catalog is read first
-- (pg_attribute: no lock on the table) and ALTER runs only when the column is missing, once per
-- database, waiting at most 2 s for its lock (then lock_not_available, nothing changed: apply
-- the file again later), as 006 does.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
               WHERE a.attrelid = 'public.device_state'::regclass AND a.attname = 'owner'
                 AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RETURN;
    END IF;
    PERFORM pg_catalog.set_config('lock_timeout', '2s', true);
    BEGIN
        ALTER TABLE public.device_state ADD COLUMN IF NOT EXISTS owner bigint;
    EXCEPTION WHEN lock_not_available THEN
        RAISE EXCEPTION '007_device_owner: cannot add public.device_state.owner: %', SQLERRM
            USING ERRCODE = 'lock_not_available',
                  HINT = 'a transaction holds public.device_state; apply the file again later';
    END;
    COMMENT ON COLUMN public.device_state.owner IS 'avlgate: the token of the gateway shard that '
        'may write this device''s rows now (telemetry.device_state_claim); do not edit';
END $$;

CREATE SEQUENCE IF NOT EXISTS telemetry.device_owner_seq AS bigint;

-- The owner shard loads a device's state when it connects (or when its idle window is loaded
-- again): p_owner is the token it holds for the device (its uncommitted batches', or its
-- connection's; 0: none). Unless the row's owner is p_owner, the device is taken over: a new
-- token, written (waiting for any transaction that holds the row, so the state read after it
-- is that transaction's outcome). A device not enabled with p_known_only is neither claimed
-- nor given a row. Returns one row: the state as committed now, enabled as public.devices says
-- (NULL when it is not there), the owner token and whether it changed now.
-- The wait for the row is bounded: lock_timeout 2 s, then SQLSTATE 55P03 (the caller answers
-- that device later; the state load shares its link with every other device's). The claim
-- commits without waiting for its WAL flush (synchronous_commit off): a batch written under
-- the new token flushes the WAL past the claim before its own COMMIT returns, and a claim lost
-- in a crash with no such batch lost nothing that was acknowledged (the old token's batches
-- are then allowed again, and the new connection's next batch is fenced off and re-claims).
CREATE OR REPLACE FUNCTION telemetry.device_state_claim(p_imei bigint, p_owner bigint,
                                                       p_known_only boolean)
RETURNS TABLE (last_ts_ms bigint, dedup bytea, enabled boolean, owner bigint, claimed boolean)
LANGUAGE plpgsql
AS $fn$
DECLARE
    v_enabled boolean;
    v_claimed boolean := false;
BEGIN
    PERFORM pg_catalog.set_config('lock_timeout', '2s', true);
    PERFORM pg_catalog.set_config('synchronous_commit', 'off', true);
    SELECT d.enabled INTO v_enabled FROM public.devices d WHERE d.imei = p_imei;
    IF NOT (p_known_only AND v_enabled IS NOT TRUE) THEN
        LOOP
            UPDATE public.device_state s SET owner = nextval('telemetry.device_owner_seq')
            WHERE s.imei = p_imei AND s.owner IS DISTINCT FROM p_owner;
            IF FOUND THEN
                v_claimed := true;
                EXIT;
            END IF;
            -- Ours already? (A row committed after the UPDATE's snapshot, with another owner,
            -- goes round again: the next UPDATE sees it.)
            PERFORM 1 FROM public.device_state s
            WHERE s.imei = p_imei AND s.owner IS NOT DISTINCT FROM p_owner;
            EXIT WHEN FOUND;
            PERFORM 1 FROM public.device_state s WHERE s.imei = p_imei;
            CONTINUE WHEN FOUND;
            -- No row: make one. Another session inserting it concurrently makes this wait
            -- for its outcome and insert nothing; the UPDATE then sees its row.
            INSERT INTO public.device_state AS s (imei, owner)
            VALUES (p_imei, nextval('telemetry.device_owner_seq'))
            ON CONFLICT (imei) DO NOTHING;
            IF FOUND THEN
                v_claimed := true;
                EXIT;
            END IF;
        END LOOP;
    END IF;
    RETURN QUERY
        SELECT telemetry.timestamptz_to_ms(s.last_ts), s.dedup, v_enabled, s.owner, v_claimed
        FROM (SELECT p_imei AS imei) k
        LEFT JOIN public.device_state s ON s.imei = k.imei;
END
$fn$;

-- device_state_upsert (004) with the fence: p_owner[i] is the token batch carries for
-- p_imei[i]. A row whose owner is another token is not written, and then nothing of the
-- transaction may be: SQLSTATE 23AV0 names the first such device. A device without a row gets
-- one with p_owner[i]. Token 0 (a shard that holds none) is never valid: 23AV0 too.
CREATE OR REPLACE FUNCTION telemetry.device_state_upsert_owned(
    p_imei bigint[], p_last_ts_ms bigint[], p_received_ms bigint[], p_lon_e7 integer[],
    p_lat_e7 integer[], p_dedup bytea[], p_instance text, p_shard integer, p_owner bigint[])
RETURNS integer
LANGUAGE plpgsql
AS $fn$
DECLARE
    n integer;
    moved bigint;
BEGIN
    INSERT INTO public.device_state AS s
        (imei, last_ts, last_lon, last_lat, last_received_at, instance, shard, dedup, updated_at,
         owner)
    SELECT u.imei,
           telemetry.ms_to_timestamptz(u.ts_ms),
           u.lon_e7 / 1e7::double precision,
           u.lat_e7 / 1e7::double precision,
           telemetry.ms_to_timestamptz(u.rx_ms),
           p_instance, p_shard, u.dedup, pg_catalog.now(), u.owner
    FROM unnest(p_imei, p_last_ts_ms, p_received_ms, p_lon_e7, p_lat_e7, p_dedup, p_owner)
         AS u(imei, ts_ms, rx_ms, lon_e7, lat_e7, dedup, owner)
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
        updated_at = EXCLUDED.updated_at
    WHERE s.owner IS NOT DISTINCT FROM EXCLUDED.owner;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n <> cardinality(p_imei) OR array_position(p_owner, 0) IS NOT NULL THEN
        SELECT s.imei INTO moved
        FROM unnest(p_imei, p_owner) AS u(imei, owner)
        JOIN public.device_state s ON s.imei = u.imei
        WHERE s.owner IS DISTINCT FROM u.owner OR u.owner = 0
        ORDER BY s.imei LIMIT 1;
        RAISE EXCEPTION 'device % is owned by another connection now (it moved)', moved
            USING ERRCODE = '23AV0',
                  HINT = 'avlgate refuses this packet; the device re-sends it where it is now';
    END IF;
    RETURN n;
END
$fn$;

COMMIT;
