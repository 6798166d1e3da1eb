-- lead_quality_by_source: per day, tenant and marketing source / UTM campaign, how good the leads were: the
-- average score, how many scored high (70+), how many qualified and how many were spam.
SELECT
  day,
  tenant_id,
  marketing_source,
  utm_source,
  utm_medium,
  utm_campaign,
  COUNT(*) AS leads,
  SUM(analysed) AS analysed,
  ROUND(AVG(lead_score), 2) AS avg_score,
  SUM(CASE WHEN score_band = 'high' THEN 1 ELSE 0 END) AS high_score,
  SUM(qualified) AS qualified,
  SUM(spam) AS spam,
  ROUND(1.0 * SUM(qualified) / COUNT(*), 4) AS qualified_rate
FROM `{dataset}.leads`
GROUP BY day, tenant_id, marketing_source, utm_source, utm_medium, utm_campaign
