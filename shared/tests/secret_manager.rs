//! The Secret Manager source against a local fake speaking the API's REST shapes (the real service is out of
//! reach here): payload with CRC32C, a corrupted payload, 404 and 503, the TTL cache in front, scheme routing.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use callflow::adapters::local_secrets::{CachedSecrets, LocalSecrets};
use callflow::adapters::secret_manager::{SecretManagerSecrets, SecretsByScheme};
use callflow::domain::tenant::SecretRef;
use callflow::ports::SecretSource;
use google_cloud_gax::retry_policy::{AlwaysRetry, RetryPolicyExt};
use google_cloud_secretmanager_v1::client::SecretManagerService;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const NAME: &str = "projects/callflow/secrets/acme-callrail-signing-key";

async fn source(mock: &MockServer) -> SecretManagerSecrets {
    let client = SecretManagerService::builder()
        .with_endpoint(mock.uri())
        .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
        .with_retry_policy(AlwaysRetry.with_attempt_limit(2))
        .build()
        .await
        .unwrap();
    SecretManagerSecrets::with_client(client)
}

fn payload(data: &[u8], crc: u32) -> serde_json::Value {
    serde_json::json!({
        "name": format!("{NAME}/versions/3"),
        "payload": {
            "data": base64::engine::general_purpose::STANDARD.encode(data),
            "dataCrc32c": crc.to_string(),
        }
    })
}

fn reference() -> SecretRef {
    SecretRef(format!("gcp-sm:{NAME}"))
}

#[tokio::test]
async fn the_latest_version_is_read_checked_and_cached() {
    let mock = MockServer::start().await;
    let key = b"072e77e426f92738a72fe23c4d1953b4\n";
    Mock::given(method("GET"))
        .and(path(format!("/v1/{NAME}/versions/latest:access")))
        .respond_with(ResponseTemplate::new(200).set_body_json(payload(key, crc32c::crc32c(key))))
        .mount(&mock)
        .await;
    let cached = CachedSecrets::new(Arc::new(source(&mock).await), Duration::from_millis(200));
    for _ in 0..5 {
        assert_eq!(cached.secret(&reference()).await.unwrap().expose(), "072e77e426f92738a72fe23c4d1953b4");
    }
    assert_eq!(mock.received_requests().await.unwrap().len(), 1, "the cache must answer within its TTL");
    tokio::time::sleep(Duration::from_millis(250)).await;
    cached.secret(&reference()).await.unwrap();
    assert_eq!(mock.received_requests().await.unwrap().len(), 2, "a rotated key is picked up after the TTL");
    // A pinned version is asked for by its own name.
    Mock::given(method("GET"))
        .and(path(format!("/v1/{NAME}/versions/2:access")))
        .respond_with(ResponseTemplate::new(200).set_body_json(payload(b"old-key", crc32c::crc32c(b"old-key"))))
        .mount(&mock)
        .await;
    let pinned = SecretRef(format!("gcp-sm:{NAME}/versions/2"));
    assert_eq!(source(&mock).await.secret(&pinned).await.unwrap().expose(), "old-key");
}

#[tokio::test]
async fn a_corrupted_payload_is_refused() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(payload(b"secret", 12345)))
        .mount(&mock)
        .await;
    let err = source(&mock).await.secret(&reference()).await.unwrap_err();
    assert!(err.message.contains("CRC32C") && err.retryable, "{err:?}");
}

#[tokio::test]
async fn missing_secrets_are_permanent_outages_are_not() {
    let mock = MockServer::start().await;
    let not_found = serde_json::json!({"error": {"code": 404, "message": "Secret [x] not found or has no versions.", "status": "NOT_FOUND"}});
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(404).set_body_json(not_found)).mount(&mock).await;
    let err = source(&mock).await.secret(&reference()).await.unwrap_err();
    assert!(!err.retryable, "{err:?}");

    let mock = MockServer::start().await;
    let unavailable = serde_json::json!({"error": {"code": 503, "message": "The service is currently unavailable.", "status": "UNAVAILABLE"}});
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(503).set_body_json(unavailable)).mount(&mock).await;
    let err = source(&mock).await.secret(&reference()).await.unwrap_err();
    assert!(err.retryable, "{err:?}");

    let err = source(&mock).await.secret(&SecretRef("gcp-sm:projects/p".into())).await.unwrap_err();
    assert!(!err.retryable && err.message.contains("expected gcp-sm:"), "{err:?}");
}

#[tokio::test]
async fn references_are_routed_by_scheme() {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(payload(b"from-sm", crc32c::crc32c(b"from-sm"))))
        .mount(&mock)
        .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k"), "from-file\n").unwrap();
    let routed = SecretsByScheme::new(LocalSecrets::new(dir.path()), Some(Arc::new(source(&mock).await)));
    assert_eq!(routed.secret(&reference()).await.unwrap().expose(), "from-sm");
    assert_eq!(routed.secret(&SecretRef("file:k".into())).await.unwrap().expose(), "from-file");
    let local_only = SecretsByScheme::new(LocalSecrets::new(dir.path()), None);
    let err = local_only.secret(&reference()).await.unwrap_err();
    assert!(!err.retryable && err.message.contains("not configured"), "{err:?}");
}
