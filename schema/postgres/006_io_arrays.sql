-- 006_io_arrays.sql — the IO elements of telemetry.positions as arrays, and reading them the
-- same way over rows of both layouts.
--
-- Rows written from now on hold their IO elements in four arrays (io = NULL):
--   io_ids  integer[]  ids of the fixed-width elements (1, 2, 4, 8 bytes), in wire order
--   io_vals bigint[]   their values, zero-extended; a u64 >= 2^63 as its 64-bit two's-complement
--                      pattern (negative): telemetry.io_u64() gives the unsigned reading
--   nx_ids  integer[]  ids of the Codec 8E variable-length (NX) elements, in wire order
--   nx_vals bytea[]    their bytes as sent
-- (empty arrays, never NULL, when a record has no such element). Rows stored before, and by a
-- gateway run with --io-layout jsonb, hold io jsonb ({"<id>": unsigned integer | "lowercase
-- hex"}, gateway/copyenc.h) and NULL arrays. COPY of a row costs ~1.65x less in the arrays
-- layout (the jsonb text parse dominated), and a query by IO id is as fast.
--
-- Here: the four columns for a database made by the 001 from before them; functions to read
-- one element and to convert between the layouts; the view telemetry.positions_io, which
-- shows every row in both layouts; telemetry.io_arrays_backfill(), which converts old rows.
--
-- Like every file here: one transaction, idempotent, safe to re-apply while gateways run COPY.
-- On a database that has the columns, nothing here takes a lock stronger than ACCESS SHARE
-- on telemetry.positions or its partitions (the integration test holds an EXCLUSIVE lock on
-- the table while re-applying this file).

BEGIN;
SET LOCAL lock_timeout = '5s';
DO $$ BEGIN PERFORM pg_advisory_xact_lock(1635151975, 1); END $$;

-- The four columns, at the end (after codec), where 001 puts them on a new database.
-- ALTER TABLE ... ADD COLUMN of a nullable column without a default only writes the catalog
-- (no table rewrite, no scan), but it takes ACCESS EXCLUSIVE on telemetry.positions and on
-- every partition, for a moment; even ADD COLUMN IF NOT EXISTS takes that lock before it
-- notices the column exists. So the catalog is read first (pg_attribute: no lock on the table)
-- and ALTER runs only when a column is missing: once per database. While it waits for its lock, every new COPY queues behind
-- it, so it waits at most 2 s (one long transaction on the table, a report say, would
-- otherwise stall every gateway for as long as it runs) and then fails with
-- lock_not_available, having changed nothing; apply the file again later.
DO $$
DECLARE
    want constant text[] := ARRAY['io_ids integer[]', 'io_vals bigint[]', 'nx_ids integer[]',
                                  'nx_vals bytea[]'];
    missing integer := 0;
    have text; -- 'name type' of the column as it is, NULL when missing
    file_lock_timeout constant text := pg_catalog.current_setting('lock_timeout');
BEGIN
    FOR i IN 1 .. array_length(want, 1) LOOP
        SELECT a.attname || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod) INTO have
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = 'telemetry.positions'::regclass
          AND a.attname = split_part(want[i], ' ', 1) AND a.attnum > 0 AND NOT a.attisdropped;
        IF have IS NULL THEN
            missing := missing + 1;
        ELSIF have <> want[i] THEN
            RAISE EXCEPTION 'telemetry.positions.%: expected %, found %',
                split_part(want[i], ' ', 1), split_part(want[i], ' ', 2),
                substr(have, length(split_part(want[i], ' ', 1)) + 2)
                USING ERRCODE = 'datatype_mismatch';
        END IF;
    END LOOP;
    IF missing = 0 THEN
        RETURN;
    END IF;
    PERFORM pg_catalog.set_config('lock_timeout', '2s', true);
    BEGIN
        ALTER TABLE telemetry.positions
            ADD COLUMN IF NOT EXISTS io_ids integer[],
            ADD COLUMN IF NOT EXISTS io_vals bigint[],
            ADD COLUMN IF NOT EXISTS nx_ids integer[],
            ADD COLUMN IF NOT EXISTS nx_vals bytea[];
    EXCEPTION WHEN lock_not_available THEN
        RAISE EXCEPTION '006_io_arrays: cannot add the IO array columns to telemetry.positions: %',
            SQLERRM USING ERRCODE = 'lock_not_available',
            HINT = 'A transaction holds a lock on telemetry.positions or a partition (see '
                   'pg_locks); nothing was changed. Apply the file again when it has ended.';
    END;
    PERFORM pg_catalog.set_config('lock_timeout', file_lock_timeout, true);
END
$$;

-- ---- reading one element -------------------------------------------------------------------
--
-- The per-element readers are one expression each, so the planner inlines them into the
-- calling query: `telemetry.io_value(io_ids, io_vals, 239) = 1` in a WHERE clause plans as
-- `io_vals[array_position(io_ids, 239)] = 1` (checked with EXPLAIN VERBOSE on PostgreSQL 15).
-- They are not STRICT: array_position is not strict (it finds NULL elements), and a STRICT
-- SQL function is only inlined when its body is strict. They return NULL for NULL arrays.

-- The value of the first fixed-width element with that id, NULL when there is none. First:
-- the jsonb layout kept the last of a repeated id (telemetry.io_jsonb does too).
CREATE OR REPLACE FUNCTION telemetry.io_value(ids integer[], vals bigint[], id integer)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN vals[array_position(ids, id)];

-- The bytes of the first NX element with that id, NULL when there is none.
CREATE OR REPLACE FUNCTION telemetry.nx_value(ids integer[], vals bytea[], id integer)
RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN vals[array_position(ids, id)];

-- The unsigned reading of an io_vals element: v for v >= 0, v + 2^64 for v < 0 (an 8-byte
-- value >= 2^63). Needed only for 8-byte elements that use the top bit.
CREATE OR REPLACE FUNCTION telemetry.io_u64(v bigint)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN v < 0 THEN v::numeric + 18446744073709551616 ELSE v::numeric END;

-- ---- converting between the layouts --------------------------------------------------------
--
-- These aggregate over the arrays, so they cannot be inlined; they are STRICT (NULL in, NULL
-- out, without a call) and PARALLEL SAFE.

-- The object the jsonb layout stores for these elements: {"<id>": unsigned number} for the
-- fixed-width ones and {"<id>": "lowercase hex"} for NX, a repeated id keeping the last one
-- in wire order (fixed-width elements come before NX on the wire), as jsonb did; '{}' for
-- empty arrays. Equal (jsonb =) to the io the gateway would have written.
CREATE OR REPLACE FUNCTION telemetry.io_jsonb(io_ids integer[], io_vals bigint[],
                                              nx_ids integer[], nx_vals bytea[])
RETURNS jsonb
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN (
    SELECT coalesce(jsonb_object_agg(e.id::text, e.val ORDER BY e.wire, e.n), '{}'::jsonb)
    FROM (SELECT 0 AS wire, f.n, f.id, to_jsonb(telemetry.io_u64(f.v)) AS val
          FROM unnest(io_ids, io_vals) WITH ORDINALITY AS f(id, v, n)
          UNION ALL
          SELECT 1, x.n, x.id, to_jsonb(encode(x.b, 'hex'))
          FROM unnest(nx_ids, nx_vals) WITH ORDINALITY AS x(id, b, n)) e
);

-- The reverse, for rows of the jsonb layout: the arrays of the same elements. jsonb keeps
-- neither the wire order nor a repeated id, so the elements come in id order, one per id.
-- Numbers are the fixed-width elements (>= 2^63 mapped to the negative bit pattern), strings
-- the NX ones (hex decoded). io_ids and io_vals (nx_ids and nx_vals) pair up element by
-- element. '{}' for an object without such elements.
CREATE OR REPLACE FUNCTION telemetry.jsonb_io_ids(io jsonb)
RETURNS integer[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN (
    SELECT coalesce(array_agg(e.key::integer ORDER BY e.key::integer), '{}')
    FROM jsonb_each(io) AS e WHERE jsonb_typeof(e.value) = 'number'
);

CREATE OR REPLACE FUNCTION telemetry.jsonb_io_vals(io jsonb)
RETURNS bigint[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN (
    SELECT coalesce(array_agg(CASE WHEN e.value::numeric >= 9223372036854775808
                                   THEN (e.value::numeric - 18446744073709551616)::bigint
                                   ELSE e.value::numeric::bigint END
                              ORDER BY e.key::integer), '{}')
    FROM jsonb_each(io) AS e WHERE jsonb_typeof(e.value) = 'number'
);

CREATE OR REPLACE FUNCTION telemetry.jsonb_nx_ids(io jsonb)
RETURNS integer[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN (
    SELECT coalesce(array_agg(e.key::integer ORDER BY e.key::integer), '{}')
    FROM jsonb_each(io) AS e WHERE jsonb_typeof(e.value) = 'string'
);

CREATE OR REPLACE FUNCTION telemetry.jsonb_nx_vals(io jsonb)
RETURNS bytea[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN (
    SELECT coalesce(array_agg(decode(e.value #>> '{}', 'hex') ORDER BY e.key::integer), '{}')
    FROM jsonb_each(io) AS e WHERE jsonb_typeof(e.value) = 'string'
);

-- ---- every row in both layouts -------------------------------------------------------------
--
-- telemetry.positions_io: the columns of telemetry.positions, in its order, where io and the
-- four arrays are filled for every row: from the row itself when it has them, converted from
-- the other layout when not. So `io->>'239'` and `telemetry.io_value(io_ids, io_vals, 239)`
-- both work over the whole history. A conversion runs only for the rows and columns a query
-- reads (the view is flattened into the query; COALESCE stops at the stored value). Queries
-- on new rows alone are cheaper on the table itself.
--
-- The view is a plain projection of one table, so the planner pulls it up: a predicate on
-- imei and ts uses the (imei, ts) index and partition pruning exactly as on the table
-- (checked with EXPLAIN on PostgreSQL 15; the integration test checks it too).
--
-- Created only when missing: CREATE OR REPLACE VIEW takes ACCESS EXCLUSIVE on the view, so a
-- re-apply would wait for every open query on it and hold up the ones after. A later change
-- to the view goes in a new numbered file. A column of telemetry.positions the view uses
-- cannot change type or be dropped while the view exists (DROP VIEW first, re-apply after).
DO $$
BEGIN
    IF to_regclass('telemetry.positions_io') IS NOT NULL THEN
        RETURN;
    END IF;
    CREATE VIEW telemetry.positions_io AS
    SELECT p.imei, p.ts, p.received_at, p.priority, p.lon, p.lat, p.altitude, p.angle,
           p.satellites, p.speed, p.event_id,
           coalesce(p.io, telemetry.io_jsonb(p.io_ids, p.io_vals, p.nx_ids, p.nx_vals)) AS io,
           p.generation, p.codec,
           coalesce(p.io_ids, telemetry.jsonb_io_ids(p.io)) AS io_ids,
           coalesce(p.io_vals, telemetry.jsonb_io_vals(p.io)) AS io_vals,
           coalesce(p.nx_ids, telemetry.jsonb_nx_ids(p.io)) AS nx_ids,
           coalesce(p.nx_vals, telemetry.jsonb_nx_vals(p.io)) AS nx_vals
    FROM telemetry.positions p;
    COMMENT ON VIEW telemetry.positions_io IS
        'telemetry.positions with io and the IO arrays filled for rows of either layout';
END
$$;

-- ---- converting old rows ----------------------------------------------------------------------
--
-- Converts up to rows_max rows of one partition of telemetry.positions from the jsonb layout to
-- the arrays (io set to NULL) and returns how many it converted; 0 when none is left. Call it
-- in a loop, one short transaction per call, until it returns 0, for each partition:
--     SELECT telemetry.io_arrays_backfill('telemetry.positions_20250101');
-- Only rows whose conversion is exact are touched: telemetry.io_jsonb of the new arrays must
-- equal the stored io (it does for everything a gateway wrote), so a row reads the same through
-- telemetry.positions_io before and after; any other row keeps its io. Elements come out in id
-- order, the order jsonb kept them in.
-- Locks: ROW EXCLUSIVE on the partition (COPY goes on) and row locks on the converted rows,
-- which no gateway writes again. Two calls on one partition at once are safe: the second
-- waits for the rows the first converts, then skips them (their io is NULL by then).
CREATE OR REPLACE FUNCTION telemetry.io_arrays_backfill(part regclass, rows_max integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
AS $fn$
DECLARE
    n bigint;
BEGIN
    IF rows_max IS NULL OR rows_max < 1 THEN
        RAISE EXCEPTION 'telemetry.io_arrays_backfill: rows_max must be > 0, not %', rows_max
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF part IS NULL OR NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_inherits h
            JOIN pg_catalog.pg_class c ON c.oid = h.inhrelid
            WHERE h.inhrelid = part AND h.inhparent = 'telemetry.positions'::regclass
              AND c.relkind = 'r') THEN
        RAISE EXCEPTION 'telemetry.io_arrays_backfill: % is not a partition of '
            'telemetry.positions', part USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format(
        'WITH c AS (SELECT q.ctid AS t, q.io_ids, q.io_vals, q.nx_ids, q.nx_vals FROM ('
        '    SELECT p.ctid, p.io, telemetry.jsonb_io_ids(p.io) AS io_ids,'
        '           telemetry.jsonb_io_vals(p.io) AS io_vals, telemetry.jsonb_nx_ids(p.io) AS nx_ids,'
        '           telemetry.jsonb_nx_vals(p.io) AS nx_vals'
        '    FROM %1$s p WHERE p.io IS NOT NULL AND p.io_ids IS NULL) q'
        '  WHERE telemetry.io_jsonb(q.io_ids, q.io_vals, q.nx_ids, q.nx_vals) = q.io'
        '  LIMIT $1)'
        ' UPDATE %1$s p SET io = NULL, io_ids = c.io_ids, io_vals = c.io_vals,'
        '                   nx_ids = c.nx_ids, nx_vals = c.nx_vals'
        ' FROM c WHERE p.ctid = c.t AND p.io IS NOT NULL AND p.io_ids IS NULL', part)
        USING rows_max;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;

COMMENT ON FUNCTION telemetry.io_arrays_backfill(regclass, integer) IS
    'Converts up to rows_max jsonb-layout rows of one partition of telemetry.positions to the '
    'IO arrays; call until it returns 0';

COMMIT;
