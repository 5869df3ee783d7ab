-- 002_partitions.sql — daily partitions of telemetry.positions, made ahead of time without
-- blocking COPY, and retention.
--
-- Partitions are UTC days named telemetry.positions_YYYYMMDD, covering [day, day + 1).
-- The gateway calls telemetry.ensure_partitions() at start and daily; an operator or cron may
-- call telemetry.drop_partitions() for retention.
--
-- Why not CREATE TABLE ... PARTITION OF: it takes ACCESS EXCLUSIVE on telemetry.positions,
-- which waits for every open COPY transaction and then makes every new COPY wait behind it.
-- ATTACH PARTITION needs only SHARE UPDATE EXCLUSIVE on the parent, which COPY's ROW
-- EXCLUSIVE does not conflict with. What ATTACH still locks (measured on PostgreSQL 15 with
-- pg_locks; the integration test checks it):
--   telemetry.positions           SHARE UPDATE EXCLUSIVE  COPY goes on; conflicts only with
--                                                         VACUUM/ANALYZE, CREATE INDEX
--                                                         CONCURRENTLY, another ATTACH/DETACH
--   the new partition             ACCESS EXCLUSIVE        invisible to others until commit
--   telemetry.positions_default   ACCESS EXCLUSIVE        a COPY whose rows go to the default
--                                                         partition waits for this short
--                                                         transaction; other COPYs do not
-- and it would scan two tables: the new partition, to prove its rows fit the bound (skipped:
-- the table is created with a CHECK constraint that implies the bound), and the default
-- partition, to prove no row of the new range stays there (not avoidable without a CHECK on
-- the default partition, which would itself need a scan to add; it is cheap while the default
-- partition stays small, which it does when partitions are made ahead).

BEGIN;
SET LOCAL lock_timeout = '5s';
DO $$ BEGIN PERFORM pg_advisory_xact_lock(1635151975, 1); END $$;

-- Makes the partitions of the UTC days today .. today + days_ahead that are not attached yet.
-- Returns how many it made, how many are still missing afterwards, and why (detail, NULL when
-- nothing is missing; also raised as a WARNING). missing > 0 means a lock could not be had
-- within lock_timeout_ms, another session holds the partition lock right now, or a table in
-- the way is not ours; rows for those days go to the default partition meanwhile and move
-- out when a later call makes their partition.
-- One call is one transaction; each day is its own subtransaction, so a day that fails
-- leaves the days made before it in place.
CREATE OR REPLACE FUNCTION telemetry.ensure_partitions(days_ahead integer DEFAULT 7,
                                                       lock_timeout_ms integer DEFAULT 1000)
RETURNS TABLE (created integer, missing integer, detail text)
LANGUAGE plpgsql
-- The SET clause scopes lock_timeout to this call: the set_config below changes it for the
-- call only, and the caller's value is back when it returns.
SET lock_timeout = '1s'
AS $fn$
DECLARE
    parent constant regclass := 'telemetry.positions'::regclass;
    today constant date := (pg_catalog.now() AT TIME ZONE 'UTC')::date;
    def regclass;
    day date;
    part text;
    lo text;
    hi text;
    stop boolean := false;
BEGIN
    IF days_ahead IS NULL OR days_ahead < 0 OR days_ahead > 366 THEN
        RAISE EXCEPTION 'telemetry.ensure_partitions: days_ahead must be 0..366, not %',
            days_ahead USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF lock_timeout_ms IS NULL OR lock_timeout_ms < 1 THEN
        RAISE EXCEPTION 'telemetry.ensure_partitions: lock_timeout_ms must be > 0, not %',
            lock_timeout_ms USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_catalog.set_config('lock_timeout', lock_timeout_ms || 'ms', true);
    created := 0;
    missing := 0;

    SELECT NULLIF(pt.partdefid, 0)::regclass INTO def
    FROM pg_catalog.pg_partitioned_table pt WHERE pt.partrelid = parent;

    -- Gateways of every shard and instance call this; one of them does the work and the
    -- others return at once instead of queueing on the same locks. Key ('avlg', 2).
    IF NOT pg_catalog.pg_try_advisory_xact_lock(1635151975, 2) THEN
        detail := 'another session holds the partition lock';
        stop := true;
    END IF;

    FOR i IN 0 .. days_ahead LOOP
        day := today + i;
        part := 'positions_' || to_char(day, 'YYYYMMDD');
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM pg_catalog.pg_inherits h
            JOIN pg_catalog.pg_class c ON c.oid = h.inhrelid
            WHERE h.inhparent = parent AND c.relname = part
              AND c.relnamespace = 'telemetry'::regnamespace);
        IF stop THEN
            missing := missing + 1;
            CONTINUE;
        END IF;
        -- Bounds as explicit UTC literals, independent of the session's TimeZone and DateStyle.
        lo := to_char(day, 'YYYY-MM-DD') || ' 00:00:00+00';
        hi := to_char(day + 1, 'YYYY-MM-DD') || ' 00:00:00+00';
        BEGIN
            -- 1. The default partition, first and in the mode ATTACH will take on it anyway:
            --    no COPY can put a row of this day there between the move (3) and the ATTACH
            --    (4), and no lock upgrade can deadlock. Waits at most lock_timeout for COPY
            --    transactions that wrote to the default partition; blocks only COPYs that
            --    route rows there, until this transaction ends.
            IF def IS NOT NULL THEN
                EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', def);
            END IF;
            -- 2. A standalone table shaped like the parent. LIKE takes ACCESS SHARE on
            --    telemetry.positions (conflicts only with ACCESS EXCLUSIVE). The CHECK
            --    constraint equals the partition bound (ts is NOT NULL), so ATTACH skips the
            --    scan that would prove it.
            EXECUTE format('CREATE TABLE telemetry.%I (LIKE telemetry.positions INCLUDING DEFAULTS'
                           ' INCLUDING CONSTRAINTS, CONSTRAINT %I CHECK (ts >= %L AND ts < %L))',
                           part, part || '_bound', lo, hi);
            -- 3. Rows of this day that arrived before its partition existed. ROW EXCLUSIVE on
            --    the default partition (already held stronger) and the new table.
            IF def IS NOT NULL THEN
                EXECUTE format('WITH moved AS (DELETE FROM %s WHERE ts >= %L AND ts < %L'
                               ' RETURNING *) INSERT INTO telemetry.%I SELECT * FROM moved',
                               def, lo, hi, part);
            END IF;
            -- 4. SHARE UPDATE EXCLUSIVE on telemetry.positions, ACCESS EXCLUSIVE on the new
            --    table and the default partition (held). Scans the default partition; builds
            --    the (imei, ts) index on the new table (empty, or the moved rows).
            EXECUTE format('ALTER TABLE telemetry.positions ATTACH PARTITION telemetry.%I'
                           ' FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
            -- 5. The CHECK now repeats the partition bound and would cost a test per inserted
            --    row. ACCESS EXCLUSIVE on the new partition, which nobody sees before commit.
            EXECUTE format('ALTER TABLE telemetry.%I DROP CONSTRAINT %I', part, part || '_bound');
            created := created + 1;
        EXCEPTION
            WHEN lock_not_available THEN
                detail := format('telemetry.%s not made: %s', part, SQLERRM);
                RAISE WARNING 'telemetry.ensure_partitions: %', detail;
                missing := missing + 1;
                -- Every later day needs the same locks: stop waiting, retry on the next call.
                stop := true;
            WHEN duplicate_table OR invalid_object_definition THEN
                -- A table of that name that is not a partition, or an operator's partition
                -- that overlaps the day: not ours to change.
                detail := format('telemetry.%s not made: %s', part, SQLERRM);
                RAISE WARNING 'telemetry.ensure_partitions: %', detail;
                missing := missing + 1;
        END;
    END LOOP;
    IF missing = 0 THEN
        detail := NULL;
    END IF;
    RETURN NEXT;
END
$fn$;

COMMENT ON FUNCTION telemetry.ensure_partitions(integer, integer) IS
    'Makes the daily partitions of telemetry.positions for today .. today + days_ahead (UTC) '
    'without blocking COPY; returns (created, missing, detail)';

-- The daily partitions whose whole day lies more than keep_days days before today (UTC):
-- every row in them is older than keep_days. Only tables named by ensure_partitions count.
CREATE OR REPLACE FUNCTION telemetry.expired_partitions(keep_days integer)
RETURNS SETOF regclass
LANGUAGE sql STABLE
AS $fn$
    SELECT c.oid::regclass
    FROM pg_catalog.pg_inherits h
    JOIN pg_catalog.pg_class c ON c.oid = h.inhrelid
    WHERE h.inhparent = 'telemetry.positions'::regclass
      AND c.relnamespace = 'telemetry'::regnamespace
      AND c.relname ~ '^positions_[0-9]{8}$'
      AND to_date(substr(c.relname, 11), 'YYYYMMDD') + 1
          <= (pg_catalog.now() AT TIME ZONE 'UTC')::date - keep_days
    ORDER BY c.relname
$fn$;

-- Retention: drops the expired daily partitions and deletes default-partition rows that are
-- both older than the window and received before it (a pre-fix record received today stays
-- for keep_days). Returns the partitions dropped.
--
-- Dropping a partition takes ACCESS EXCLUSIVE on telemetry.positions and on the default
-- partition (so does a plain DETACH): COPY waits for that instant, and this call waits at
-- most lock_timeout_ms for open COPY transactions before it gives up with a WARNING (the
-- rest is dropped by a later call). To never block COPY, detach outside a transaction
-- instead, for each row of telemetry.expired_partitions(keep_days):
--     ALTER TABLE telemetry.positions DETACH PARTITION <p> CONCURRENTLY;  DROP TABLE <p>;
CREATE OR REPLACE FUNCTION telemetry.drop_partitions(keep_days integer,
                                                     lock_timeout_ms integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql
SET lock_timeout = '1s'
AS $fn$
DECLARE
    cutoff constant timestamptz :=
        ((pg_catalog.now() AT TIME ZONE 'UTC')::date - keep_days)::timestamp AT TIME ZONE 'UTC';
    def regclass;
    p regclass;
    dropped integer := 0;
BEGIN
    IF keep_days IS NULL OR keep_days < 0 THEN
        RAISE EXCEPTION 'telemetry.drop_partitions: keep_days must be >= 0, not %', keep_days
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF lock_timeout_ms IS NULL OR lock_timeout_ms < 1 THEN
        RAISE EXCEPTION 'telemetry.drop_partitions: lock_timeout_ms must be > 0, not %',
            lock_timeout_ms USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_catalog.set_config('lock_timeout', lock_timeout_ms || 'ms', true);
    -- Not at the same time as ensure_partitions (which holds it briefly).
    PERFORM pg_catalog.pg_advisory_xact_lock(1635151975, 2);

    FOR p IN SELECT * FROM telemetry.expired_partitions(keep_days) LOOP
        BEGIN
            EXECUTE format('DROP TABLE %s', p);
            dropped := dropped + 1;
        EXCEPTION WHEN lock_not_available THEN
            RAISE WARNING 'telemetry.drop_partitions: % not dropped: %', p, SQLERRM;
            EXIT;
        END;
    END LOOP;

    SELECT NULLIF(pt.partdefid, 0)::regclass INTO def
    FROM pg_catalog.pg_partitioned_table pt
    WHERE pt.partrelid = 'telemetry.positions'::regclass;
    IF def IS NOT NULL THEN
        -- ROW EXCLUSIVE: concurrent COPY into the default partition goes on.
        EXECUTE format('DELETE FROM %s WHERE ts < $1 AND received_at < $1', def) USING cutoff;
    END IF;
    RETURN dropped;
END
$fn$;

COMMENT ON FUNCTION telemetry.drop_partitions(integer, integer) IS
    'Retention: drops daily partitions older than keep_days (UTC) and old default-partition rows';

COMMIT;
