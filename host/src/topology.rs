//! The emulator topology's setup: everything terraform creates on Google Cloud, created on the emulators from the
//! same definitions — the Spanner database with the repo's DDL, the buckets, the BigQuery dataset and tables from
//! the repo's schema files, the Pub/Sub topics, and one push subscription per Pub/Sub trigger with the trigger's
//! retry and dead-letter policy, pushing to the function's URL. Idempotent: run it again and it converges.
//!
//! It only ever talks to emulators (it refuses without their variables): on Google Cloud, terraform owns this.

use std::collections::BTreeSet;

use anyhow::{Context, bail};
use callflow::domain::analytics::{Dialect, TABLES, VIEWS, view_sql};
use callflow::eventarc::{Source, Triggers};
use serde_json::{Value, json};

/// Each dead-letter topic the triggers name, with the subscription that holds its messages until an operator
/// looks (a topic without one drops them): `{topic}-hold`, as terraform/pubsub.tf names it, so `callflow
/// dead-letters` finds it in every environment.
pub fn dead_letter_holds(triggers: &Triggers) -> Vec<(String, String)> {
    let topics: BTreeSet<&str> = triggers.triggers.iter().map(|t| t.retry.dead_letter_topic.as_str()).collect();
    topics.into_iter().map(|topic| (topic.to_owned(), format!("{topic}-hold"))).collect()
}

/// The subscription Eventarc would create for a Pub/Sub trigger; named after the trigger.
pub fn subscription_name(trigger: &str) -> String {
    format!("eventarc-{trigger}")
}

#[derive(Debug, Default)]
pub struct Provisioned {
    pub buckets: Vec<String>,
    pub tables: Vec<String>,
    pub topics: Vec<String>,
    pub subscriptions: Vec<String>,
}

fn emulator(var: &str) -> anyhow::Result<String> {
    callflow::adapters::emulator_url(var)
        .with_context(|| format!("{var} is not set: provision only sets up emulators (terraform owns Google Cloud)"))
}

/// Create or converge; `function_url` says where each function listens (the environment's `functions`, or
/// another address in tests).
pub async fn provision(
    triggers: &Triggers,
    spanner_database: &str,
    dataset: &str,
    function_url: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Provisioned> {
    let (gcs, bigquery, pubsub) =
        (emulator("STORAGE_EMULATOR_HOST")?, emulator("BIGQUERY_EMULATOR_HOST")?, emulator("PUBSUB_EMULATOR_HOST")?);
    emulator("SPANNER_EMULATOR_HOST")?;
    let project = &triggers.project;
    let http = reqwest::Client::new();
    let mut done = Provisioned::default();

    callflow::adapters::spanner::migrate(spanner_database).await.context("Spanner database")?;

    for bucket in triggers.buckets.values() {
        let answer =
            http.post(format!("{gcs}/storage/v1/b?project={project}")).json(&json!({ "name": bucket })).send().await?;
        created_or_exists(answer, &format!("bucket {bucket}")).await?;
        done.buckets.push(bucket.clone());
    }

    let bq = format!("{bigquery}/bigquery/v2/projects/{project}");
    let answer = http
        .post(format!("{bq}/datasets"))
        .json(&json!({"datasetReference": {"projectId": project, "datasetId": dataset}}))
        .send()
        .await?;
    created_or_exists(answer, &format!("dataset {dataset}")).await?;
    // Every table the project streams to (`domain::analytics::TABLES`), from its schema file: day-partitioned by
    // `event_time` and clustered by tenant where the table has those columns (they all do so far).
    for (table, schema) in TABLES {
        let fields: Value = serde_json::from_str(schema).with_context(|| format!("schema of table {table}"))?;
        let has = |column: &str| fields.as_array().is_some_and(|f| f.iter().any(|c| c["name"] == column));
        let mut config = json!({
            "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table},
            "schema": {"fields": fields},
        });
        if has("event_time") {
            config["timePartitioning"] = json!({"type": "DAY", "field": "event_time"});
        }
        if has("tenant_id") {
            config["clustering"] = json!({"fields": ["tenant_id"]});
        }
        let answer = http.post(format!("{bq}/datasets/{dataset}/tables")).json(&config).send().await?;
        created_or_exists(answer, &format!("table {table}")).await?;
        done.tables.push(format!("{dataset}.{table}"));
    }
    // The analysts' views, in their order (a view may read the ones before it); a view that exists is replaced,
    // so a re-provision brings the current definitions.
    for (view, sql) in VIEWS {
        let query = view_sql(sql, Dialect::BigQuery { project, dataset });
        let config = json!({
            "tableReference": {"projectId": project, "datasetId": dataset, "tableId": view},
            "view": {"query": query, "useLegacySql": false},
        });
        let url = format!("{bq}/datasets/{dataset}/tables");
        let answer = http.post(&url).json(&config).send().await?;
        if answer.status() == reqwest::StatusCode::CONFLICT {
            let answer = http.put(format!("{url}/{view}")).json(&config).send().await?;
            created_or_exists(answer, &format!("view {view}")).await?;
        } else {
            created_or_exists(answer, &format!("view {view}")).await?;
        }
        done.tables.push(format!("{dataset}.{view}"));
    }

    let ps = format!("{pubsub}/v1/projects/{project}");
    for topic in triggers.topics.values() {
        let answer = http.put(format!("{ps}/topics/{topic}")).json(&json!({})).send().await?;
        created_or_exists(answer, &format!("topic {topic}")).await?;
        done.topics.push(topic.clone());
    }
    for trigger in &triggers.triggers {
        let Source::Topic(topic) = &trigger.source else { continue };
        let url = function_url(&trigger.destination).with_context(|| {
            format!("no URL for function {} (environment {:?}, [functions])", trigger.destination, triggers.environment)
        })?;
        let name = subscription_name(&trigger.name);
        let config = json!({
            "topic": format!("projects/{project}/topics/{topic}"),
            "pushConfig": {"pushEndpoint": url},
            // Pub/Sub's ack deadline is at most 600 s; a push answered later is redelivered.
            "ackDeadlineSeconds": trigger.timeout.as_secs().clamp(10, 600),
            "retryPolicy": {
                "minimumBackoff": format!("{}s", trigger.retry.min_backoff.as_secs()),
                "maximumBackoff": format!("{}s", trigger.retry.max_backoff.as_secs()),
            },
            "deadLetterPolicy": {
                "deadLetterTopic": format!("projects/{project}/topics/{}", trigger.retry.dead_letter_topic),
                "maxDeliveryAttempts": trigger.retry.max_delivery_attempts,
            },
        });
        upsert_subscription(&http, &ps, &name, config).await?;
        done.subscriptions.push(name);
    }
    for (topic, name) in dead_letter_holds(triggers) {
        // Pull, never expiring, a week of retention: dead letters wait for `dead-letters list`/replay.
        let config = json!({
            "topic": format!("projects/{project}/topics/{topic}"),
            "ackDeadlineSeconds": 60,
            "messageRetentionDuration": "604800s",
            "expirationPolicy": {},
        });
        // Created once and left alone: the emulator cannot update an expiration policy, and nothing here changes.
        let answer = http.put(format!("{ps}/subscriptions/{name}")).json(&config).send().await?;
        created_or_exists(answer, &format!("subscription {name}")).await?;
        done.subscriptions.push(name);
    }
    Ok(done)
}

async fn created_or_exists(answer: reqwest::Response, what: &str) -> anyhow::Result<()> {
    let status = answer.status();
    if status.is_success() || status == reqwest::StatusCode::CONFLICT {
        return Ok(());
    }
    bail!("creating {what}: {status}: {}", answer.text().await.unwrap_or_default())
}

/// Create the subscription, or bring an existing one to `config` (its topic cannot change).
async fn upsert_subscription(http: &reqwest::Client, ps: &str, name: &str, config: Value) -> anyhow::Result<()> {
    let url = format!("{ps}/subscriptions/{name}");
    let answer = http.put(&url).json(&config).send().await?;
    if answer.status() != reqwest::StatusCode::CONFLICT {
        return created_or_exists(answer, &format!("subscription {name}")).await;
    }
    let mut fields: Vec<&str> = config.as_object().expect("an object").keys().map(String::as_str).collect();
    fields.retain(|f| *f != "topic");
    let answer = http.patch(&url).json(&json!({"subscription": config, "updateMask": fields.join(",")})).send().await?;
    created_or_exists(answer, &format!("subscription {name} (update)")).await
}
