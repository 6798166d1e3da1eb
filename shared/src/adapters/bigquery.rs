//! BigQuery analytics sink: streaming inserts (`tabledata.insertAll`) with each row's `insert_id` as BigQuery's
//! `insertId`, so a retried batch does not store a row twice (BigQuery dedupes on it best-effort, for about a
//! minute; the `insert_id` column lets analysts' views dedupe beyond that). A 200 answer that carries
//! `insertErrors` is an error: the rows it names were not stored.
//!
//! Authentication goes through the same `google-cloud-auth` credentials as the other adapters (one source of
//! truth for ADC); with `BIGQUERY_EMULATOR_HOST` set, requests go to the emulator with a placeholder token.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use gcp_bigquery_client::Client;
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::dataset_reference::DatasetReference;
use gcp_bigquery_client::model::field_type::FieldType;
use gcp_bigquery_client::model::get_query_results_parameters::GetQueryResultsParameters;
use gcp_bigquery_client::model::query_request::QueryRequest;
use gcp_bigquery_client::model::table_data_insert_all_request::TableDataInsertAllRequest;
use google_cloud_auth::credentials::{CacheableResource, Credentials};

use crate::domain::analytics::{self, AnalyticsRow};
use crate::ports::{AnalyticsQuery, AnalyticsSink, PortError, PortResult, QueryResult};

const GOOGLE_V2: &str = "https://bigquery.googleapis.com/bigquery/v2";
/// insertAll accepts up to 50,000 rows and 10 MB per request; Google recommends about 500 rows.
const ROWS_PER_REQUEST: usize = 500;

pub struct BigQuerySink {
    client: Client,
    project: String,
    dataset: String,
}

#[derive(Clone)]
struct GoogleAuth(Option<Credentials>);

#[async_trait]
impl Authenticator for GoogleAuth {
    async fn access_token(&self) -> Result<String, BQError> {
        let Some(credentials) = &self.0 else {
            return Ok("emulator".to_owned());
        };
        let headers = match credentials.headers(http::Extensions::new()).await {
            Ok(CacheableResource::New { data, .. }) => data,
            Ok(CacheableResource::NotModified) => return Err(BQError::NoToken),
            Err(e) => return Err(BQError::InvalidApplicationDefaultCredentialsAuthenticator(std::io::Error::other(e))),
        };
        headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned)
            .ok_or(BQError::NoToken)
    }
}

impl BigQuerySink {
    /// Stream into `project.dataset`; on the emulator when `BIGQUERY_EMULATOR_HOST` is set.
    pub async fn connect(project: &str, dataset: &str) -> anyhow::Result<Self> {
        match super::emulator_url("BIGQUERY_EMULATOR_HOST") {
            Some(host) => Self::with(&format!("{host}/bigquery/v2"), None, project, dataset).await,
            None => {
                let credentials = google_cloud_auth::credentials::Builder::default().build()?;
                Self::with(GOOGLE_V2, Some(credentials), project, dataset).await
            }
        }
    }

    /// `v2_base` is the API root (`…/bigquery/v2`); without credentials a placeholder token is sent (emulators).
    pub async fn with(
        v2_base: &str,
        credentials: Option<Credentials>,
        project: &str,
        dataset: &str,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        let client = gcp_bigquery_client::client_builder::ClientBuilder::new()
            .with_v2_base_url(v2_base.to_owned())
            .with_client(http)
            .build_from_authenticator(Arc::new(GoogleAuth(credentials)))
            .await?;
        Ok(Self { client, project: project.to_owned(), dataset: dataset.to_owned() })
    }

    async fn insert_table(&self, table: &str, rows: &[&AnalyticsRow]) -> PortResult<()> {
        let mut request = TableDataInsertAllRequest::new();
        for row in rows {
            request
                .add_row(Some(row.insert_id.clone()), &row.fields)
                .map_err(|e| PortError::permanent(format!("bigquery: row {}: {e}", row.insert_id)))?;
        }
        let response = self
            .client
            .tabledata()
            .insert_all(&self.project, &self.dataset, table, request)
            .await
            .map_err(|e| classify(table, e))?;
        let errors = response.insert_errors.unwrap_or_default();
        if errors.is_empty() {
            return Ok(());
        }
        // Rows BigQuery rejected for what they contain are permanent; rows it stopped because another row of the
        // request was invalid ("stopped") would go in on their own, but the batch as a whole is refused here.
        let mut reasons = Vec::new();
        let mut permanent = false;
        for e in &errors {
            for proto in e.errors.iter().flatten() {
                let reason = proto.reason.as_deref().unwrap_or("unknown");
                permanent |= matches!(reason, "invalid" | "invalidQuery" | "notFound");
                let insert_id = e.index.and_then(|i| rows.get(i as usize)).map_or("?", |r| r.insert_id.as_str());
                reasons.push(format!("{insert_id}: {reason}: {}", proto.message.as_deref().unwrap_or("")));
            }
        }
        let message =
            format!("bigquery: {table}: {} of {} rows refused: {}", errors.len(), rows.len(), reasons.join("; "));
        Err(if permanent { PortError::permanent(message) } else { PortError::retryable(message) })
    }
}

/// One cell of a query answer as JSON. BigQuery sends every scalar as a string, and a TIMESTAMP as seconds (a
/// float, or microseconds with `useInt64Timestamp`): it comes out as the RFC 3339 text the SQLite sink stores.
fn cell(kind: &FieldType, value: Option<serde_json::Value>) -> serde_json::Value {
    use serde_json::Value;
    let Some(Value::String(text)) = value else { return value.unwrap_or(Value::Null) };
    match kind {
        FieldType::Integer | FieldType::Int64 => text.parse::<i64>().map_or(Value::String(text), Value::from),
        FieldType::Float | FieldType::Float64 | FieldType::Numeric | FieldType::Bignumeric => {
            text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(Value::String(text), Value::Number)
        }
        FieldType::Boolean | FieldType::Bool => Value::Bool(text.eq_ignore_ascii_case("true")),
        FieldType::Timestamp => {
            let micros = if text.contains(['.', 'E', 'e']) {
                text.parse::<f64>().ok().map(|secs| (secs * 1e6).round() as i64)
            } else {
                text.parse::<i64>().ok()
            };
            micros
                .and_then(chrono::DateTime::from_timestamp_micros)
                .map_or(Value::String(text), |t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)))
        }
        _ => Value::String(text),
    }
}

#[async_trait]
impl AnalyticsQuery for BigQuerySink {
    /// A GoogleSQL query with the sink's dataset as the default one, every page of the answer.
    async fn query(&self, sql: &str) -> PortResult<QueryResult> {
        let mut request = QueryRequest::new(sql);
        request.default_dataset =
            Some(DatasetReference { project_id: self.project.clone(), dataset_id: self.dataset.clone() });
        request.timeout_ms = Some(60_000);
        let jobs = self.client.job();
        let first = jobs.query(&self.project, request).await.map_err(|e| classify("query", e))?;
        let mut schema = first.schema;
        let mut rows = first.rows.unwrap_or_default();
        let mut page_token = first.page_token;
        let mut complete = first.job_complete.unwrap_or(true);
        let job_id = first.job_reference.and_then(|j| j.job_id);
        while !complete || page_token.is_some() {
            let Some(job_id) = &job_id else {
                return Err(PortError::retryable("bigquery: query: an unfinished answer without a job id"));
            };
            let params = GetQueryResultsParameters {
                page_token: page_token.take(),
                timeout_ms: Some(60_000),
                ..Default::default()
            };
            let page = jobs.get_query_results(&self.project, job_id, params).await.map_err(|e| classify("query", e))?;
            complete = page.job_complete.unwrap_or(true);
            schema = schema.or(page.schema);
            rows.extend(page.rows.unwrap_or_default());
            page_token = page.page_token;
        }
        let fields = schema.and_then(|s| s.fields).unwrap_or_default();
        let columns = fields.iter().map(|f| f.name.clone()).collect();
        let rows = rows
            .into_iter()
            .map(|row| {
                let cells = row.columns.unwrap_or_default();
                fields
                    .iter()
                    .enumerate()
                    .map(|(i, f)| cell(&f.r#type, cells.get(i).and_then(|c| c.value.clone())))
                    .collect()
            })
            .collect();
        Ok(QueryResult { columns, rows })
    }
}

fn classify(table: &str, e: BQError) -> PortError {
    match e {
        BQError::ResponseError { error } => {
            let code = error.error.code;
            let message = format!("bigquery: {table}: {code}: {}", error.error.message);
            if code >= 500 || code == 429 || code == 408 {
                PortError::retryable(message)
            } else {
                PortError::permanent(message)
            }
        }
        other => PortError::retryable(format!("bigquery: {table}: {other}")),
    }
}

#[async_trait]
impl AnalyticsSink for BigQuerySink {
    async fn insert(&self, rows: &[AnalyticsRow]) -> PortResult<()> {
        let mut by_table: BTreeMap<&str, Vec<&AnalyticsRow>> = BTreeMap::new();
        for row in rows {
            // Checked against the repo's schema (the one terraform deploys) before anything is sent, so a batch
            // with a bad row is refused whole, as the embedded sink refuses it.
            analytics::validate(row).map_err(PortError::permanent)?;
            by_table.entry(&row.table).or_default().push(row);
        }
        for (table, rows) in by_table {
            for chunk in rows.chunks(ROWS_PER_REQUEST) {
                self.insert_table(table, chunk).await?;
            }
        }
        Ok(())
    }
}
