-- crm_success_by_provider: per day (of the push), tenant and CRM, every push and how it ended — delivered,
-- retried (a retryable failure: 429, 5xx, timeout), dead-lettered (refused, or out of attempts) — the share
-- delivered, the leads delivered on their first push, and the CRM's average answer time.
WITH pushes AS (
  SELECT * FROM (
    SELECT p.*, ROW_NUMBER() OVER (PARTITION BY p.insert_id ORDER BY p.event_time) AS copy
    FROM `{dataset}.crm_deliveries` AS p
  ) AS d
  WHERE copy = 1
)
SELECT
  DATE(event_time) AS day,
  tenant_id,
  provider,
  COUNT(*) AS pushes,
  SUM(CASE WHEN outcome = 'delivered' THEN 1 ELSE 0 END) AS delivered,
  SUM(CASE WHEN outcome = 'retry_scheduled' THEN 1 ELSE 0 END) AS retried,
  SUM(CASE WHEN outcome = 'dead_lettered' THEN 1 ELSE 0 END) AS dead_lettered,
  SUM(CASE WHEN outcome = 'delivered' AND attempt = 1 THEN 1 ELSE 0 END) AS first_try,
  ROUND(1.0 * SUM(CASE WHEN outcome = 'delivered' THEN 1 ELSE 0 END) / COUNT(*), 4) AS success_rate,
  ROUND(AVG(latency_ms), 1) AS avg_latency_ms
FROM pushes
GROUP BY DATE(event_time), tenant_id, provider
