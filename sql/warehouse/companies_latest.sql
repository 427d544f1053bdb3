-- The seed's "latest version of each company", over the append-only
-- raw.company_events: one row per company id, the event with the greatest
-- COALESCE(updated_at, created_at), ties broken by the latest ingestion
-- (then the Kafka position). Re-sent events (same idempotency_key) count
-- once: the first one ingested. Same text for DuckDB and Postgres; the sink
-- creates it at start.
CREATE SCHEMA IF NOT EXISTS public;
CREATE OR REPLACE VIEW public.companies_latest AS
WITH unique_events AS (
    SELECT e.*,
           row_number() OVER (PARTITION BY e.idempotency_key
                              ORDER BY e._ingested_at, e._partition, e._offset) AS _copy
      FROM raw.company_events AS e
), ranked AS (
    SELECT u.*,
           row_number() OVER (PARTITION BY u.id
                              ORDER BY COALESCE(u.updated_at, u.created_at) DESC,
                                       u._ingested_at DESC, u._partition DESC, u._offset DESC) AS _rank
      FROM unique_events AS u
     WHERE u._copy = 1
)
SELECT id, organization_id, name, created_at, updated_at, event_type, idempotency_key, changes
  FROM ranked
 WHERE _rank = 1;
