-- 003_devices.sql — the business plane's device tables in `public`, where Directus manages
-- them as collections.
--
-- devices: the fleet, edited in Directus. The gateway reads `enabled` (for --devices known)
-- and never writes here. The date_/user_ columns are the Directus audit fields; Directus
-- fills them, so they have no triggers.
--
-- device_state: written only by the gateway, in the same transaction as the COPY of the rows
-- it describes (telemetry.device_state_upsert), and read back when a device connects
-- (telemetry.device_state_get). Directus may show it read-only.

BEGIN;
SET LOCAL lock_timeout = '5s';
DO $$ BEGIN PERFORM pg_advisory_xact_lock(1635151975, 1); END $$;

CREATE TABLE IF NOT EXISTS public.devices (
    imei bigint PRIMARY KEY,
    name text,
    enabled boolean NOT NULL DEFAULT true,
    date_created timestamptz DEFAULT now(),
    date_updated timestamptz,
    user_created uuid,
    user_updated uuid
);

COMMENT ON TABLE public.devices IS 'Trackers known to the fleet; avlgate --devices known '
    'accepts only enabled ones';

CREATE TABLE IF NOT EXISTS public.device_state (
    imei bigint PRIMARY KEY,
    last_ts timestamptz,          -- newest record time stored (GREATEST over all batches)
    last_lon double precision,    -- position of the record at last_ts
    last_lat double precision,
    last_received_at timestamptz, -- when the record at last_ts was received
    instance text,                -- avlgate --instance that wrote last
    shard integer,                -- its owner shard
    dedup bytea,                  -- duplicate-detection state, opaque, owned by the gateway
    updated_at timestamptz DEFAULT now()
);

COMMENT ON TABLE public.device_state IS 'Last known state per tracker, written by avlgate '
    'with the rows it describes';
COMMENT ON COLUMN public.device_state.dedup IS 'Opaque duplicate-detection state of avlgate; '
    'do not edit';

COMMIT;
