-- tests/data/001_telemetry_v1.sql — schema/postgres/001_telemetry.sql as it was before the IO
-- arrays (main at ed6a229), unchanged below this comment: test_pg_migrate makes a database of
-- that shape, then applies the current files to it.

-- 001_telemetry.sql — the telemetry store: telemetry.positions, range-partitioned by ts.
--
-- Applied in file-name order with `psql -v ON_ERROR_STOP=1 -f` or by pgschema_apply(); every
-- file is one transaction and may be re-applied at any time, also while gateways are running
-- COPY: nothing here takes a lock stronger than ACCESS SHARE on an existing table. Plain SQL
-- only (no psql meta-commands), so libpq can run a file as one query string.
--
-- Telemetry lives in its own schema because Directus cannot manage a partitioned table and
-- must never touch it. The gateway writes positions only by COPY, with exactly these columns
-- (gateway/copyenc.h, COPYENC_COLUMNS) and checks them at start (gateway/pgschema.c).
-- There is no primary key: duplicates are recognised by the gateway before COPY, and a
-- unique index would have to include ts and be checked on every row.

BEGIN;
SET LOCAL lock_timeout = '5s';
-- Two sessions applying at once would race on CREATE ... IF NOT EXISTS (unique violation in
-- the catalog); the appliers queue here instead. Key ('avlg', 1); ('avlg', 2) is
-- ensure_partitions'.
DO $$ BEGIN PERFORM pg_advisory_xact_lock(1635151975, 1); END $$;

CREATE SCHEMA IF NOT EXISTS telemetry;

-- Takes no lock when the table exists.
CREATE TABLE IF NOT EXISTS telemetry.positions (
    imei bigint NOT NULL,
    ts timestamptz NOT NULL,          -- the record's time (device clock, UTC)
    received_at timestamptz NOT NULL, -- when the gateway read the packet
    priority smallint,                -- 0 low, 1 high, 2 panic
    lon double precision,             -- degrees, lon_e7 / 1e7
    lat double precision,
    altitude smallint,                -- metres
    angle smallint,                   -- degrees from north
    satellites smallint,              -- 0: no fix at record time
    speed smallint,                   -- km/h
    event_id integer,                 -- IO id that triggered the record, 0 = periodic
    io jsonb,                         -- {"<io id>": unsigned integer | "lowercase hex" (NX)}
    generation smallint,              -- Codec 16 generation type; NULL for 8 and 8E
    codec smallint                    -- 8, 142 (8E) or 16
) PARTITION BY RANGE (ts);

COMMENT ON TABLE telemetry.positions IS
    'AVL records, written by avlgate with COPY; daily partitions from '
    'telemetry.ensure_partitions(), everything else in telemetry.positions_default';

-- The default partition takes what no daily partition covers: records before the first
-- partition (a device's backlog, pre-fix timestamps such as 1970) and far in the future.
-- Without it such a row would fail the whole COPY batch. CREATE TABLE IF NOT EXISTS takes no
-- lock when the table exists; the DO block keeps that true for an operator who renamed it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_partitioned_table
                   WHERE partrelid = 'telemetry.positions'::regclass AND partdefid <> 0) THEN
        CREATE TABLE IF NOT EXISTS telemetry.positions_default
            PARTITION OF telemetry.positions DEFAULT;
    END IF;
END
$$;

-- CREATE INDEX IF NOT EXISTS would take a SHARE lock on positions and every partition before
-- it noticed the index exists, blocking COPY: look in the catalog first. On a new table the
-- index is built on empty partitions; every partition attached later gets its own.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                   WHERE i.indrelid = 'telemetry.positions'::regclass
                     AND i.indkey::text = (
                         SELECT string_agg(a.attnum::text, ' ' ORDER BY k.n)
                         FROM unnest(ARRAY['imei', 'ts']) WITH ORDINALITY AS k(name, n)
                         JOIN pg_catalog.pg_attribute a
                           ON a.attrelid = 'telemetry.positions'::regclass
                          AND a.attname = k.name)) THEN
        CREATE INDEX IF NOT EXISTS positions_imei_ts_idx ON telemetry.positions (imei, ts);
    END IF;
END
$$;

COMMIT;
