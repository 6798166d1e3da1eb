-- spam_rate: per day, tenant and marketing source, the share of analysed leads the tenant's workflow called spam.
SELECT
  day,
  tenant_id,
  marketing_source,
  COUNT(*) AS leads,
  SUM(analysed) AS analysed,
  SUM(spam) AS spam,
  ROUND(CASE WHEN SUM(analysed) = 0 THEN NULL ELSE 1.0 * SUM(spam) / SUM(analysed) END, 4) AS spam_rate
FROM `{dataset}.leads`
GROUP BY day, tenant_id, marketing_source
