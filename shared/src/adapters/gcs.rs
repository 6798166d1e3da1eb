//! Cloud Storage object store.
//!
//! Object data goes through the official client (`google-cloud-storage`): uploads with its checksums and retry
//! rules, reads with its checksum validation. Its metadata operations (get, list, delete) exist only in
//! `StorageControl`, which speaks gRPC; the emulators this project can run speak only the JSON API, so those three
//! use the JSON API directly — with the same credentials, in production as in tests, so the path that is tested is
//! the path that runs. With `STORAGE_EMULATOR_HOST` set, both go to the emulator with anonymous credentials.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use google_cloud_auth::credentials::{CacheableResource, Credentials};
use google_cloud_storage::client::Storage;
use google_cloud_storage::model::Object;
use google_cloud_storage::streaming_source::StreamingSource;
use serde::Deserialize;

use crate::ports::{ByteStream, NewObject, ObjectInfo, ObjectPage, ObjectStore, PortError, PortResult};

const GOOGLE_ENDPOINT: &str = "https://storage.googleapis.com";

pub struct GcsObjectStore {
    storage: Storage,
    http: reqwest::Client,
    credentials: Credentials,
    endpoint: String,
}

impl GcsObjectStore {
    /// The real service with Application Default Credentials, or the emulator named by `STORAGE_EMULATOR_HOST`.
    pub async fn connect() -> anyhow::Result<Self> {
        match super::emulator_url("STORAGE_EMULATOR_HOST") {
            Some(endpoint) => {
                Self::with(endpoint, google_cloud_auth::credentials::anonymous::Builder::new().build()).await
            }
            None => {
                Self::with(GOOGLE_ENDPOINT.to_owned(), google_cloud_auth::credentials::Builder::default().build()?)
                    .await
            }
        }
    }

    pub async fn with(endpoint: String, credentials: Credentials) -> anyhow::Result<Self> {
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        let storage =
            Storage::builder().with_endpoint(endpoint.clone()).with_credentials(credentials.clone()).build().await?;
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(Self { storage, http, credentials, endpoint })
    }

    fn object_url(&self, bucket: &str, name: &str) -> reqwest::Url {
        let mut url = self.bucket_url(bucket);
        // Each path segment is percent-encoded, so a `/` in an object name becomes %2F as the API requires.
        url.path_segments_mut().expect("http url").push("o").push(name);
        url
    }

    fn bucket_url(&self, bucket: &str) -> reqwest::Url {
        let mut url = reqwest::Url::parse(&self.endpoint).expect("endpoint is a URL");
        url.path_segments_mut().expect("http url").pop_if_empty().extend(["storage", "v1", "b", bucket]);
        url
    }

    async fn json_api(&self, request: reqwest::RequestBuilder) -> PortResult<reqwest::Response> {
        let headers = match self.credentials.headers(http::Extensions::new()).await {
            Ok(CacheableResource::New { data, .. }) => data,
            Ok(CacheableResource::NotModified) => http::HeaderMap::new(),
            Err(e) => return Err(PortError { message: format!("gcs: credentials: {e}"), retryable: e.is_transient() }),
        };
        request.headers(headers).send().await.map_err(|e| PortError::retryable(format!("gcs: {e}")))
    }
}

fn check_name(bucket: &str, name: &str) -> PortResult<()> {
    if bucket.is_empty() || bucket.contains('/') || name.is_empty() || name.len() > 1024 || name.contains('\0') {
        return Err(PortError::permanent(format!("invalid object name {bucket}/{name}")));
    }
    Ok(())
}

fn status_error(what: &str, status: reqwest::StatusCode, body: &str) -> PortError {
    let message = format!("gcs: {what}: {status}: {}", body.chars().take(300).collect::<String>());
    if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
        PortError::retryable(message)
    } else {
        PortError::permanent(message)
    }
}

fn client_error(what: &str, e: &google_cloud_storage::Error) -> PortError {
    let retryable = e.is_timeout()
        || e.is_transport()
        || e.is_io()
        || e.is_exhausted()
        || e.http_status_code().is_some_and(|s| s >= 500 || s == 429 || s == 408);
    PortError { message: format!("gcs: {what}: {e}"), retryable }
}

/// The JSON API's object resource: numbers arrive as strings.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonObject {
    bucket: String,
    name: String,
    generation: String,
    size: String,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    md5_hash: Option<String>,
    #[serde(default)]
    crc32c: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    time_created: Option<DateTime<Utc>>,
}

impl JsonObject {
    fn info(self) -> PortResult<ObjectInfo> {
        let number = |field: &str, v: &str| {
            v.parse().map_err(|_| PortError::permanent(format!("gcs: object {} has a bad {field}: {v}", self.name)))
        };
        Ok(ObjectInfo {
            generation: number("generation", &self.generation)?,
            size: number("size", &self.size)? as u64,
            content_type: self.content_type.clone().unwrap_or_default(),
            md5_base64: self.md5_hash.clone().unwrap_or_default(),
            crc32c_base64: self.crc32c.clone().unwrap_or_default(),
            metadata: self.metadata.clone().unwrap_or_default(),
            created: self.time_created.unwrap_or_else(Utc::now),
            bucket: self.bucket,
            name: self.name,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonList {
    #[serde(default)]
    items: Vec<JsonObject>,
    #[serde(default)]
    next_page_token: Option<String>,
}

fn object_info(o: Object) -> ObjectInfo {
    let checksums = o.checksums.unwrap_or_default();
    ObjectInfo {
        bucket: o.bucket.strip_prefix("projects/_/buckets/").unwrap_or(&o.bucket).to_owned(),
        name: o.name,
        generation: o.generation,
        size: o.size.max(0) as u64,
        content_type: o.content_type,
        md5_base64: B64.encode(&checksums.md5_hash),
        crc32c_base64: checksums.crc32c.map(|c| B64.encode(c.to_be_bytes())).unwrap_or_default(),
        metadata: o.metadata.into_iter().collect(),
        created: o
            .create_time
            .and_then(|t| DateTime::from_timestamp(t.seconds(), t.nanos().max(0) as u32))
            .unwrap_or_else(Utc::now),
    }
}

/// Our body stream as the client's upload source, refusing to go past the object's size limit. Failing the
/// source fails the upload before it is finalized, so an oversize body never becomes an object.
struct LimitedSource {
    // The client wants a `Sync` source; the mutex provides that and is never locked (`get_mut` through `&mut`).
    body: std::sync::Mutex<ByteStream>,
    seen: u64,
    max: u64,
    /// Set when the limit stopped the upload, so the error is reported as what it is (permanent), whatever the
    /// client wraps it in.
    exceeded: Arc<AtomicBool>,
}

impl StreamingSource for LimitedSource {
    type Error = std::io::Error;

    async fn next(&mut self) -> Option<Result<Bytes, Self::Error>> {
        let body = self.body.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        let chunk = body.next().await?;
        Some(chunk.and_then(|c| {
            self.seen += c.len() as u64;
            if self.seen > self.max {
                self.exceeded.store(true, Ordering::Relaxed);
                Err(std::io::Error::other(format!("object exceeds {} bytes", self.max)))
            } else {
                Ok(c)
            }
        }))
    }
}

#[async_trait]
impl ObjectStore for GcsObjectStore {
    async fn put(&self, object: NewObject<'_>, body: ByteStream) -> PortResult<ObjectInfo> {
        check_name(object.bucket, object.name)?;
        let exceeded = Arc::new(AtomicBool::new(false));
        let source = LimitedSource {
            body: std::sync::Mutex::new(body),
            seen: 0,
            max: object.max_bytes,
            exceeded: exceeded.clone(),
        };
        let written = self
            .storage
            .write_object(format!("projects/_/buckets/{}", object.bucket), object.name, source)
            .set_content_type(object.content_type)
            .set_metadata(object.metadata)
            .send_buffered()
            .await;
        match written {
            Ok(o) => Ok(object_info(o)),
            Err(_) if exceeded.load(Ordering::Relaxed) => {
                Err(PortError::permanent(format!("object exceeds {} bytes", object.max_bytes)))
            }
            Err(e) => Err(client_error("upload", &e)),
        }
    }

    async fn head(&self, bucket: &str, name: &str) -> PortResult<Option<ObjectInfo>> {
        check_name(bucket, name)?;
        let response = self.json_api(self.http.get(self.object_url(bucket, name))).await?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = response.text().await.map_err(|e| PortError::retryable(format!("gcs: metadata: {e}")))?;
        if !status.is_success() {
            return Err(status_error("metadata", status, &body));
        }
        let object: JsonObject =
            serde_json::from_str(&body).map_err(|e| PortError::permanent(format!("gcs: malformed metadata: {e}")))?;
        object.info().map(Some)
    }

    async fn get(&self, bucket: &str, name: &str) -> PortResult<Option<(ObjectInfo, Bytes)>> {
        let Some(info) = self.head(bucket, name).await? else {
            return Ok(None);
        };
        // Pinned to the generation just described, so data and metadata belong to the same object even if the
        // name is overwritten in between.
        let read = self
            .storage
            .read_object(format!("projects/_/buckets/{bucket}"), name)
            .set_generation(info.generation)
            .send()
            .await;
        let mut response = match read {
            Ok(r) => r,
            Err(e) if e.http_status_code() == Some(404) => return Ok(None),
            Err(e) => return Err(client_error("read", &e)),
        };
        let mut data = Vec::with_capacity(info.size as usize);
        while let Some(chunk) = response.next().await {
            data.extend_from_slice(&chunk.map_err(|e| client_error("read", &e))?);
        }
        Ok(Some((info, Bytes::from(data))))
    }

    async fn delete(&self, bucket: &str, name: &str) -> PortResult<bool> {
        check_name(bucket, name)?;
        let response = self.json_api(self.http.delete(self.object_url(bucket, name))).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            s => Err(status_error("delete", s, &response.text().await.unwrap_or_default())),
        }
    }

    async fn list(&self, bucket: &str, prefix: &str, token: Option<&str>, size: usize) -> PortResult<ObjectPage> {
        check_name(bucket, "-")?;
        let mut url = self.bucket_url(bucket);
        url.path_segments_mut().expect("http url").push("o");
        url.query_pairs_mut().append_pair("prefix", prefix).append_pair("maxResults", &size.clamp(1, 1000).to_string());
        if let Some(token) = token {
            url.query_pairs_mut().append_pair("pageToken", token);
        }
        let response = self.json_api(self.http.get(url)).await?;
        let status = response.status();
        let body = response.text().await.map_err(|e| PortError::retryable(format!("gcs: list: {e}")))?;
        if !status.is_success() {
            return Err(status_error("list", status, &body));
        }
        let page: JsonList =
            serde_json::from_str(&body).map_err(|e| PortError::permanent(format!("gcs: malformed listing: {e}")))?;
        let objects = page.items.into_iter().map(JsonObject::info).collect::<PortResult<Vec<_>>>()?;
        Ok(ObjectPage { objects, next_page_token: page.next_page_token.filter(|t| !t.is_empty()) })
    }
}
