-- The latest state of one CDC table: the last version of every row by key,
-- in source order; deletes removed; rows at or before the last truncate
-- dropped. The sink creates one per raw table, for DuckDB and Postgres
-- alike; for another engine, fill in the placeholders:
--   {view}     the view, e.g. public.transfers
--   {raw}      its raw table, e.g. raw_public.transfers
--   {keys}     the primary key's columns, e.g. id
--   {latest}   each key's last row of `kept` in source order, as the engine
--              picks it fastest: DISTINCT ON in Postgres,
--                SELECT DISTINCT ON ({keys}) k.* FROM kept AS k
--                 ORDER BY {keys}, k._commit_lsn DESC NULLS LAST,
--                          k._op <> 'r' DESC, k._tx_ordinal DESC NULLS LAST,
--                          k._offset DESC
--              and in DuckDB the same order under QUALIFY row_number() = 1
--   {columns}  the source's columns as o.<column>, except a variable-length
--              one Postgres may send as unchanged TOAST, which takes the
--              newest earlier version that carried it (every other version
--              of the key is earlier: o is the latest; a Kafka record is
--              stored once, so its coordinates tell it apart):
--                CASE WHEN strpos(o._unchanged_toast, '"<column>"') > 0
--                THEN (SELECT p.<column> FROM kept p
--                      WHERE p.<key> = o.<key>
--                        AND NOT (p._topic = o._topic AND p._partition = o._partition
--                                 AND p._offset = o._offset)
--                        AND p._op IN ('c', 'r', 'u')
--                        AND (p._unchanged_toast IS NULL
--                             OR strpos(p._unchanged_toast, '"<column>"') = 0)
--                      ORDER BY p._commit_lsn DESC NULLS LAST, p._op <> 'r' DESC,
--                               p._tx_ordinal DESC NULLS LAST, p._offset DESC
--                      LIMIT 1)
--                ELSE o.<column> END AS <column>
--
-- Source order is the commit position, not a change's own _lsn: a
-- transaction open across a snapshot point (the initial snapshot's
-- consistent point, an incremental snapshot's high watermark) wrote its
-- changes below that point but commits above it, so the row read at the
-- point ranks below them. Rows order by _commit_lsn (a snapshot read, at
-- its point, before a transaction committing at the same position), then
-- _tx_ordinal, then the Kafka offset. Records without positions (the
-- Debezium format) order by offset, as capture writes a key's records to
-- one partition in source order, and rank below positioned ones (a stream
-- taken over from Debezium continues in walhouse's format). Against a
-- truncate they compare by _lsn (a truncate holds the table's lock, so no
-- change of the table straddles it); a record without any position is
-- never dropped by one.
--
-- `kept` is inlined, never materialized, so a planner estimates the view
-- from the raw table's statistics. Postgres picks each key's last version
-- by DISTINCT ON: it estimates that from the key's statistics, where for a
-- window function and a filter on it it guessed a handful of rows and
-- joined views by nested loops (over 200k changes the seed's questions
-- took 1.3, 1.6 and 6.1 s, and over 120 s before the raw tables were
-- analyzed; now 0.1, 0.3 and 0.2 s: `cargo bench --bench views`). DuckDB
-- takes twice as long by DISTINCT ON as by a window function.
CREATE OR REPLACE VIEW {view} AS
WITH last_truncate AS (
    SELECT t._commit_lsn AS commit_lsn, t._tx_ordinal AS tx_ordinal, t._lsn AS lsn
      FROM {raw} AS t
     WHERE t._op = 't'
     ORDER BY COALESCE(t._commit_lsn, t._lsn) DESC, t._tx_ordinal DESC NULLS LAST
     LIMIT 1
), kept AS NOT MATERIALIZED (
    SELECT r.*
      FROM {raw} AS r
     WHERE r._op <> 't'
       AND NOT EXISTS (
           SELECT 1 FROM last_truncate AS t
            WHERE CASE WHEN r._commit_lsn IS NOT NULL AND t.commit_lsn IS NOT NULL
                       THEN r._commit_lsn < t.commit_lsn
                            OR (r._commit_lsn = t.commit_lsn
                                AND (r._op = 'r' OR r._tx_ordinal < t.tx_ordinal))
                       ELSE r._lsn <= t.lsn END)
), latest AS (
    {latest}
)
SELECT {columns}
  FROM latest AS o
 WHERE o._op <> 'd'
