-- leads: one row per call or form lead — where it came from, how far it got, what the analysis found, when it
-- reached the CRM and what it cost. The other views count over this one. A row a retried stream stored twice is
-- counted once (BigQuery's insertId dedupe is best effort), and `day` is the UTC day the lead arrived.
-- Written once for BigQuery and SQLite: see `view_sql` in shared/src/domain/analytics.rs.
-- Rows a retried stream stored twice are the same row: the MIN/MAX and first-row-of readings below need no
-- dedupe, and the sums (cost) read each insert_id once.
WITH steps AS (
  SELECT insert_id, event_time, tenant_id, call_id, stage, outcome, call_state, call_source, marketing_source,
    utm_source, utm_medium, utm_campaign, answered
  FROM `{dataset}.calls`
  WHERE stage <> 'crm-breaker'
),
journey AS (
  SELECT
    tenant_id,
    call_id,
    MIN(event_time) AS received_at,
    MAX(call_source) AS call_source,
    MAX(marketing_source) AS marketing_source,
    MAX(utm_source) AS utm_source,
    MAX(utm_medium) AS utm_medium,
    MAX(utm_campaign) AS utm_campaign,
    MAX(CASE WHEN answered THEN 1 ELSE 0 END) AS answered,
    MAX(CASE WHEN stage = 'on-audio-uploaded' AND outcome = 'transcribed' THEN 1 ELSE 0 END) AS transcribed,
    MAX(CASE WHEN stage = 'on-transcript' AND outcome = 'analysed' THEN 1 ELSE 0 END) AS analysed,
    MAX(CASE WHEN stage IN ('on-analysis', 'on-crm-retry') AND outcome = 'spam' THEN 1 ELSE 0 END) AS spam,
    -- Qualified: passed the tenant's workflow (spam gate, service area, minimum score), delivered or not.
    MAX(CASE WHEN stage IN ('on-analysis', 'on-crm-retry')
          AND outcome IN ('delivered', 'no_crm', 'retry_scheduled', 'deferred', 'dead_lettered') THEN 1 ELSE 0 END)
      AS qualified,
    MAX(CASE WHEN stage IN ('on-analysis', 'on-crm-retry') AND outcome = 'delivered' THEN 1 ELSE 0 END) AS delivered
  FROM steps
  GROUP BY tenant_id, call_id
),
last_state AS (
  SELECT tenant_id, call_id, call_state FROM (
    SELECT tenant_id, call_id, call_state,
      ROW_NUMBER() OVER (PARTITION BY tenant_id, call_id ORDER BY event_time DESC, insert_id DESC) AS n
    FROM steps
    WHERE call_state IS NOT NULL
  ) AS s
  WHERE n = 1
),
analysis AS (
  SELECT tenant_id, call_id, analyzer, intent, project_type, lead_score, score_band, spam_likelihood FROM (
    SELECT a.*, ROW_NUMBER() OVER (PARTITION BY a.tenant_id, a.call_id ORDER BY a.event_time DESC, a.insert_id DESC) AS n
    FROM `{dataset}.analyses` AS a
  ) AS s
  WHERE n = 1
),
delivery AS (
  SELECT
    tenant_id,
    call_id,
    MAX(provider) AS crm_provider,
    COUNT(DISTINCT insert_id) AS crm_pushes,
    MIN(CASE WHEN outcome = 'delivered' THEN call_to_crm_secs END) AS secs_to_crm
  FROM `{dataset}.crm_deliveries`
  GROUP BY tenant_id, call_id
),
cost AS (
  SELECT
    tenant_id,
    call_id,
    SUM(usd) AS usd,
    SUM(COALESCE(audio_secs, 0)) AS audio_secs,
    SUM(COALESCE(prompt_tokens, 0) + COALESCE(output_tokens, 0)) AS llm_tokens,
    SUM(api_calls) AS api_calls
  FROM (
    SELECT DISTINCT insert_id, tenant_id, call_id, usd, audio_secs, prompt_tokens, output_tokens, api_calls
    FROM `{dataset}.costs`
  ) AS d
  GROUP BY tenant_id, call_id
)
SELECT
  j.tenant_id,
  j.call_id,
  j.call_source,
  j.marketing_source,
  j.utm_source,
  j.utm_medium,
  j.utm_campaign,
  DATE(j.received_at) AS day,
  j.received_at,
  s.call_state AS state,
  j.answered,
  j.transcribed,
  j.analysed,
  j.spam,
  j.qualified,
  j.delivered,
  a.analyzer,
  a.intent,
  a.project_type,
  a.lead_score,
  a.score_band,
  a.spam_likelihood,
  d.crm_provider,
  COALESCE(d.crm_pushes, 0) AS crm_pushes,
  d.secs_to_crm,
  COALESCE(c.usd, 0) AS cost_usd,
  COALESCE(c.audio_secs, 0) AS audio_secs,
  COALESCE(c.llm_tokens, 0) AS llm_tokens,
  COALESCE(c.api_calls, 0) AS api_calls
FROM journey AS j
LEFT JOIN last_state AS s ON s.tenant_id = j.tenant_id AND s.call_id = j.call_id
LEFT JOIN analysis AS a ON a.tenant_id = j.tenant_id AND a.call_id = j.call_id
LEFT JOIN delivery AS d ON d.tenant_id = j.tenant_id AND d.call_id = j.call_id
LEFT JOIN cost AS c ON c.tenant_id = j.tenant_id AND c.call_id = j.call_id
