-- 001_telemetry.sql — the telemetry store: telemetry.positions, range-partitioned by ts.
--
-- Applied in file-name order with `psql -v ON_ERROR_STOP=1 -f` or by pgschema_apply(); every
-- file is one transaction and may be re-applied at any time, also while gateways are running
-- COPY: nothing here takes a lock stronger than ACCESS SHARE on an existing table. Plain SQL
-- only (no psql meta-commands), so libpq can run a file as one query string.
--
-- Telemetry lives in its own schema because Directus cannot manage a partitioned table and
-- must never touch it. The gateway writes positions only by COPY, with these columns (io or
-- the four IO arrays, by --io-layout; gateway/copyenc.h) and checks them at start
-- (gateway/pgschema.c).
--
-- The IO elements are stored as four arrays at the end of the table (one id array and one
-- value array per kind) rather than as jsonb: COPY of a row costs ~1.65x less without the
-- jsonb text parse, and a query by IO id is as fast with array_position. The columns come
-- after codec because 006_io_arrays.sql adds them there to a database made before them: a
-- fresh database and a migrated one have the same column order.
--
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
    -- Legacy layout (rows stored before 006, and by a gateway run with --io-layout jsonb):
    -- {"<io id>": unsigned integer | "lowercase hex" (NX)}; NULL in the arrays layout.
    io jsonb,
    generation smallint,              -- Codec 16 generation type; NULL for 8 and 8E
    codec smallint,                   -- 8, 142 (8E) or 16
    -- The arrays layout (the default since 006; NULL in jsonb-layout rows). Wire order; empty
    -- arrays, never NULL, for a record without such elements. Read with telemetry.io_value,
    -- nx_value, io_u64, or through the view telemetry.positions_io (006_io_arrays.sql).
    io_ids integer[],                 -- ids of the fixed-width elements (1, 2, 4, 8 bytes)
    io_vals bigint[],                 -- their values, zero-extended; a u64 >= 2^63 is stored
                                      -- as its two's-complement bit pattern (negative)
    nx_ids integer[],                 -- ids of the Codec 8E variable-length (NX) elements
    nx_vals bytea[]                   -- their bytes as sent
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
