//! The BigQuery sink against a local fake that answers as `tabledata.insertAll` does: the request carries each
//! row's insert_id as insertId; a 200 with insertErrors is an error (permanent when a row is invalid, retryable
//! when BigQuery only failed on its side); HTTP errors are classified by status.

use std::io::Read;

use callflow::adapters::bigquery::BigQuerySink;
use callflow::domain::analytics::{AnalyticsRow, CALLS_TABLE};
use callflow::ports::AnalyticsSink;
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const INSERT_ALL: &str = "/bigquery/v2/projects/p/datasets/d/tables/calls/insertAll";

fn row(id: &str) -> AnalyticsRow {
    let Value::Object(fields) = json!({
        "insert_id": id, "event_time": "2026-11-21T10:00:00Z", "tenant_id": "acme", "call_id": id,
        "stage": "on-webhook", "outcome": "accepted",
    }) else {
        unreachable!()
    };
    AnalyticsRow { table: CALLS_TABLE.into(), insert_id: id.into(), fields }
}

async fn sink(server: &MockServer) -> BigQuerySink {
    BigQuerySink::with(&format!("{}/bigquery/v2", server.uri()), None, "p", "d").await.unwrap()
}

#[tokio::test]
async fn rows_are_sent_with_their_insert_ids() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(INSERT_ALL))
        .and(header("authorization", "Bearer emulator"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"kind": "bigquery#tableDataInsertAllResponse"})))
        .expect(1)
        .mount(&server)
        .await;
    sink(&server).await.insert(&[row("a"), row("b")]).await.unwrap();
    let request = &server.received_requests().await.unwrap()[0];
    // gcp-bigquery-client gzips insertAll bodies.
    let mut text = String::new();
    flate2::read::GzDecoder::new(&request.body[..]).read_to_string(&mut text).unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    let rows = body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0]["insertId"].as_str(), rows[0]["json"]["insert_id"].as_str()), (Some("a"), Some("a")));
    assert_eq!(rows[1]["insertId"], "b");
}

#[tokio::test]
async fn insert_errors_in_a_200_are_errors() {
    let server = MockServer::start().await;
    // BigQuery's answer when one row of a request is invalid: that row "invalid", the others "stopped".
    Mock::given(method("POST"))
        .and(path(INSERT_ALL))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "kind": "bigquery#tableDataInsertAllResponse",
            "insertErrors": [
                {"index": 1, "errors": [{"reason": "invalid", "location": "bogus", "debugInfo": "",
                                          "message": "no such field: bogus."}]},
                {"index": 0, "errors": [{"reason": "stopped", "location": "", "debugInfo": "", "message": ""}]}
            ]
        })))
        .mount(&server)
        .await;
    let err = sink(&server).await.insert(&[row("a"), row("b")]).await.unwrap_err();
    assert!(!err.retryable, "an invalid row is permanent: {err}");
    assert!(err.message.contains("b: invalid: no such field: bogus."), "{err}");
}

#[tokio::test]
async fn backend_insert_errors_and_5xx_are_retryable_4xx_permanent() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(INSERT_ALL))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "insertErrors": [{"index": 0, "errors": [{"reason": "backendError", "message": "try again"}]}]
        })))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let error_body = |code: u16, status: &str| {
        json!({"error": {"code": code, "message": status, "status": status,
                          "errors": [{"reason": status, "message": status, "domain": "global"}]}})
    };
    Mock::given(method("POST"))
        .and(path(INSERT_ALL))
        .respond_with(ResponseTemplate::new(503).set_body_json(error_body(503, "backendError")))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(INSERT_ALL))
        .respond_with(ResponseTemplate::new(404).set_body_json(error_body(404, "notFound")))
        .mount(&server)
        .await;
    let sink = sink(&server).await;
    let first = sink.insert(&[row("a")]).await.unwrap_err();
    assert!(first.retryable, "backendError: {first}");
    let second = sink.insert(&[row("a")]).await.unwrap_err();
    assert!(second.retryable, "503: {second}");
    let third = sink.insert(&[row("a")]).await.unwrap_err();
    assert!(!third.retryable && third.message.contains("404"), "404: {third}");
}

#[tokio::test]
async fn a_row_that_does_not_fit_the_schema_is_refused_before_sending() {
    let server = MockServer::start().await;
    let mut bad = row("b");
    bad.fields.insert("bogus".into(), json!(1));
    let err = sink(&server).await.insert(&[row("a"), bad]).await.unwrap_err();
    assert!(!err.retryable && err.message.contains("no such field bogus"), "{err}");
    assert!(server.received_requests().await.unwrap().is_empty(), "nothing was sent");
}
