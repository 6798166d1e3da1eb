-- lead_funnel: per day, tenant, channel (callrail or form) and marketing source, how many leads reached each
-- step — answered, transcribed, analysed, spam, qualified (passed the tenant's workflow), delivered to the CRM —
-- and the share that reached the CRM.
SELECT
  day,
  tenant_id,
  call_source,
  marketing_source,
  COUNT(*) AS leads,
  SUM(answered) AS answered,
  SUM(transcribed) AS transcribed,
  SUM(analysed) AS analysed,
  SUM(spam) AS spam,
  SUM(qualified) AS qualified,
  SUM(delivered) AS delivered,
  ROUND(1.0 * SUM(delivered) / COUNT(*), 4) AS delivered_rate
FROM `{dataset}.leads`
GROUP BY day, tenant_id, call_source, marketing_source
