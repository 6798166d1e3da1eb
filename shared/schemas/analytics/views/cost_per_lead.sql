-- cost_per_lead: per day and tenant, what the vendors cost (speech, LLM; CRM requests counted at no cost) in all,
-- per lead and per qualified lead, with the audio minutes, LLM tokens and billable requests behind it.
SELECT
  day,
  tenant_id,
  COUNT(*) AS leads,
  SUM(qualified) AS qualified,
  ROUND(SUM(cost_usd), 6) AS cost_usd,
  ROUND(SUM(audio_secs) / 60.0, 2) AS audio_minutes,
  SUM(llm_tokens) AS llm_tokens,
  SUM(api_calls) AS api_calls,
  ROUND(SUM(cost_usd) / COUNT(*), 6) AS cost_per_call,
  ROUND(CASE WHEN SUM(qualified) = 0 THEN NULL ELSE SUM(cost_usd) / SUM(qualified) END, 6) AS cost_per_qualified_lead
FROM `{dataset}.leads`
GROUP BY day, tenant_id
