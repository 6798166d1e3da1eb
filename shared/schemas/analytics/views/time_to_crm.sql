-- time_to_crm: per day, tenant and CRM, how long delivered leads took from the webhook's arrival to the CRM:
-- average, median, 90th percentile (nearest rank) and slowest, in seconds.
WITH ranked AS (
  SELECT
    day,
    tenant_id,
    crm_provider,
    secs_to_crm,
    ROW_NUMBER() OVER (PARTITION BY day, tenant_id, crm_provider ORDER BY secs_to_crm) AS n,
    COUNT(*) OVER (PARTITION BY day, tenant_id, crm_provider) AS total
  FROM `{dataset}.leads`
  WHERE delivered = 1 AND secs_to_crm IS NOT NULL
)
SELECT
  day,
  tenant_id,
  crm_provider,
  COUNT(*) AS delivered,
  ROUND(AVG(secs_to_crm), 1) AS avg_secs,
  -- The middle one, or the mean of the middle two: rows whose rank n has 2n in [total, total + 2].
  ROUND(AVG(CASE WHEN n * 2 BETWEEN total AND total + 2 THEN secs_to_crm END), 1) AS median_secs,
  ROUND(MIN(CASE WHEN n * 10 >= total * 9 THEN secs_to_crm END), 1) AS p90_secs,
  ROUND(MAX(secs_to_crm), 1) AS max_secs
FROM ranked
GROUP BY day, tenant_id, crm_provider
