-- Organizations (latest state) with the latest insolvency known, from the
-- source's own insolvency_ts column or from the daily CSV loads
-- (raw.insolvencies), whichever is later. {schema} and
-- {source_insolvency_ts} are filled in by the sink when it creates the
-- organizations view.
CREATE OR REPLACE VIEW {schema}.organizations_with_insolvency AS
WITH csv AS (
    SELECT organization_id, max(insolvency_ts) AS insolvency_ts
      FROM raw.insolvencies
     GROUP BY organization_id
)
SELECT o.*,
       CASE
           WHEN csv.insolvency_ts IS NULL THEN {source_insolvency_ts}
           WHEN {source_insolvency_ts} IS NULL OR csv.insolvency_ts > {source_insolvency_ts} THEN csv.insolvency_ts
           ELSE {source_insolvency_ts}
       END AS latest_insolvency_ts,
       csv.insolvency_ts AS csv_insolvency_ts
  FROM {schema}.organizations AS o
  LEFT JOIN csv ON csv.organization_id = o.id
