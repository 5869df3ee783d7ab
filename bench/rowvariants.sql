-- rowvariants.sql — SQL for bench/rowvariants: the accessors of the raw IO layout, in the
-- schema rowvariants (the arrays layout has its own in schema/postgres/006_io_arrays.sql).
--
-- The raw layout (gateway/copyenc.h, COPYENC_RAW) stores a record's IO groups as sent, from the
-- N1 count to the end of its last group, in io_raw bytea; the row's codec column says how to
-- read them (big-endian):
--   codec 8 (8):    four groups, values of 1, 2, 4, 8 bytes: u8 count, count x (u8 id, value)
--   codec 16 (16):  the same with u16 ids
--   codec 8E (142): u16 counts and u16 ids; then the NX group: u16 count, count x (u16 id,
--                   u16 length, bytes)
-- The bytes were checked by the gateway's decoder before they were stored; these functions
-- trust them (a short io_raw raises get_byte's "index out of valid range").
--
--   rowvariants.raw_io_value(io_raw, codec, id) bigint  the first fixed-width element with that
--       id, as io_vals holds it (an 8-byte value at or above 2^63 as its 64-bit pattern, which
--       is negative); NULL when there is none (an NX element is not a value: raw_io_nx)
--   rowvariants.raw_io_nx(io_raw, codec, id) bytea      the first NX element with that id
--   rowvariants.raw_io_elements(io_raw, codec)          every element in wire order:
--       (ord, id, width: 1, 2, 4, 8 or NULL for NX, val bigint, nx bytea)
--   rowvariants.raw_io_jsonb(io_raw, codec) jsonb       the jsonb layout's io object: ids as
--       decimal string keys, values unsigned, NX as lowercase hex; a repeated id keeps the
--       last, as jsonb does (and telemetry.io_jsonb for the arrays)
-- raw_io_value is a plpgsql loop over the elements: the cost of the raw layout's queries.
-- Applied once per database with psql -v ON_ERROR_STOP=1; idempotent.

BEGIN;
CREATE SCHEMA IF NOT EXISTS rowvariants;

CREATE OR REPLACE FUNCTION rowvariants.raw_io_value(io_raw bytea, codec smallint,
                                                    io_id integer)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $fn$
DECLARE
    wide constant boolean := codec = 142;                               -- u16 counts
    id_bytes constant integer := CASE WHEN codec = 8 THEN 1 ELSE 2 END; -- u8 or u16 ids
    p integer := 0;
    n integer;
    w integer;
    id integer;
    v bigint;
BEGIN
    IF io_id < 0 OR io_id >= 1 << (8 * id_bytes) THEN
        RETURN NULL;
    END IF;
    FOREACH w IN ARRAY ARRAY[1, 2, 4, 8] LOOP
        IF wide THEN
            n := get_byte(io_raw, p) << 8 | get_byte(io_raw, p + 1);
        ELSE
            n := get_byte(io_raw, p);
        END IF;
        p := p + CASE WHEN wide THEN 2 ELSE 1 END;
        FOR e IN 1 .. n LOOP
            IF id_bytes = 1 THEN
                id := get_byte(io_raw, p);
            ELSE
                id := get_byte(io_raw, p) << 8 | get_byte(io_raw, p + 1);
            END IF;
            IF id = io_id THEN
                v := 0;
                FOR k IN p + id_bytes .. p + id_bytes + w - 1 LOOP
                    v := v << 8 | get_byte(io_raw, k);
                END LOOP;
                RETURN v;
            END IF;
            p := p + id_bytes + w;
        END LOOP;
    END LOOP;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION rowvariants.raw_io_elements(io_raw bytea, codec smallint)
RETURNS TABLE (ord integer, id integer, width integer, val bigint, nx bytea)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $fn$
DECLARE
    wide constant boolean := codec = 142;
    id_bytes constant integer := CASE WHEN codec = 8 THEN 1 ELSE 2 END;
    p integer := 0;
    n integer;
    len integer;
BEGIN
    ord := 0;
    FOREACH width IN ARRAY ARRAY[1, 2, 4, 8] LOOP
        IF wide THEN
            n := get_byte(io_raw, p) << 8 | get_byte(io_raw, p + 1);
        ELSE
            n := get_byte(io_raw, p);
        END IF;
        p := p + CASE WHEN wide THEN 2 ELSE 1 END;
        FOR e IN 1 .. n LOOP
            IF id_bytes = 1 THEN
                id := get_byte(io_raw, p);
            ELSE
                id := get_byte(io_raw, p) << 8 | get_byte(io_raw, p + 1);
            END IF;
            val := 0;
            FOR k IN p + id_bytes .. p + id_bytes + width - 1 LOOP
                val := val << 8 | get_byte(io_raw, k);
            END LOOP;
            nx := NULL;
            ord := ord + 1;
            RETURN NEXT;
            p := p + id_bytes + width;
        END LOOP;
    END LOOP;
    IF NOT wide THEN
        RETURN;
    END IF;
    n := get_byte(io_raw, p) << 8 | get_byte(io_raw, p + 1);
    p := p + 2;
    width := NULL;
    val := NULL;
    FOR e IN 1 .. n LOOP
        id := get_byte(io_raw, p) << 8 | get_byte(io_raw, p + 1);
        len := get_byte(io_raw, p + 2) << 8 | get_byte(io_raw, p + 3);
        nx := substring(io_raw FROM p + 5 FOR len); -- substring counts from 1
        ord := ord + 1;
        RETURN NEXT;
        p := p + 4 + len;
    END LOOP;
END
$fn$;

CREATE OR REPLACE FUNCTION rowvariants.raw_io_nx(io_raw bytea, codec smallint, io_id integer)
RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $fn$
    SELECT e.nx FROM rowvariants.raw_io_elements(io_raw, codec) e
    WHERE e.id = io_id AND e.width IS NULL ORDER BY e.ord LIMIT 1
$fn$;

-- One element as the jsonb layout writes it: unsigned decimal, or NX bytes as lowercase hex.
CREATE OR REPLACE FUNCTION rowvariants.io_elem_jsonb(val bigint, nx bytea)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $fn$
    SELECT CASE WHEN nx IS NOT NULL THEN to_jsonb(encode(nx, 'hex'))
                WHEN val < 0 THEN to_jsonb(val::numeric + 18446744073709551616)
                ELSE to_jsonb(val) END
$fn$;

CREATE OR REPLACE FUNCTION rowvariants.raw_io_jsonb(io_raw bytea, codec smallint)
RETURNS jsonb
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $fn$
    SELECT coalesce(jsonb_object_agg(e.id::text, rowvariants.io_elem_jsonb(e.val, e.nx)
                                     ORDER BY e.ord), '{}'::jsonb)
    FROM rowvariants.raw_io_elements(io_raw, codec) e
$fn$;

COMMIT;
