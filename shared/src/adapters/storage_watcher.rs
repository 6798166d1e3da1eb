//! The storage watcher: Cloud Storage's finalize notifications for the emulator topology, where no emulator
//! produces them. It lists the watched buckets, and every object generation it has not announced yet is handed to
//! the local router — the same code that builds the embedded mode's storage CloudEvents and delivers them with
//! Eventarc's retry and dead-letter policy — whose destinations are the function processes' URLs.
//!
//! Announced generations are remembered in SQLite after the router has recorded their events, so a restart
//! announces what was finalized while the watcher was down and nothing twice (a crash between the two steps
//! announces one generation again; the event id is per generation and the functions dedupe on it).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rusqlite::params;
use tokio::sync::watch;

use super::local_router::LocalRouter;
use super::sqlite::{Durability, Writer, open_connection};
use crate::ports::{ObjectStore, PortResult};

const PAGE: usize = 1000;

pub struct StorageWatcher {
    objects: Arc<dyn ObjectStore>,
    router: Arc<LocalRouter>,
    buckets: Vec<String>,
    writer: Writer,
    /// (bucket, name) → last generation announced; a copy of the `announced` table.
    announced: Mutex<HashMap<(String, String), i64>>,
}

impl StorageWatcher {
    /// Watch every bucket a storage trigger of the router's definitions listens on; remember in `path`.
    pub fn open(path: &Path, objects: Arc<dyn ObjectStore>, router: Arc<LocalRouter>) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let conn = open_connection(path, Durability::Full)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS announced (bucket TEXT NOT NULL, name TEXT NOT NULL,
                                                   generation INTEGER NOT NULL, PRIMARY KEY (bucket, name))",
        )?;
        let mut announced = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT bucket, name, generation FROM announced")?;
            for row in stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))? {
                let (key, generation) = row?;
                announced.insert(key, generation);
            }
        }
        let mut buckets: Vec<String> = router
            .triggers()
            .triggers
            .iter()
            .filter_map(|t| match &t.source {
                crate::eventarc::Source::Bucket(b) => Some(b.clone()),
                crate::eventarc::Source::Topic(_) => None,
            })
            .collect();
        buckets.sort();
        buckets.dedup();
        Ok(Self {
            objects,
            router,
            buckets,
            writer: Writer::start(conn, "storage-watcher"),
            announced: Mutex::new(announced),
        })
    }

    pub fn buckets(&self) -> &[String] {
        &self.buckets
    }

    /// One pass over the watched buckets; returns how many generations were announced.
    pub async fn poll_once(&self) -> PortResult<usize> {
        let mut announced = 0;
        for bucket in &self.buckets {
            let mut token: Option<String> = None;
            loop {
                let page = self.objects.list(bucket, "", token.as_deref(), PAGE).await?;
                for info in page.objects {
                    let key = (info.bucket.clone(), info.name.clone());
                    let known = self.announced.lock().expect("announced lock").get(&key).copied();
                    if known.is_some_and(|g| g >= info.generation) {
                        continue;
                    }
                    self.router.object_finalized(&info).await?;
                    let (b, n, g) = (info.bucket.clone(), info.name.clone(), info.generation);
                    self.writer
                        .write(move |c| {
                            c.execute(
                                "INSERT INTO announced (bucket, name, generation) VALUES (?1, ?2, ?3)
                                 ON CONFLICT (bucket, name) DO UPDATE SET generation = excluded.generation",
                                params![b, n, g],
                            )
                        })
                        .await?;
                    self.announced.lock().expect("announced lock").insert(key, info.generation);
                    announced += 1;
                }
                match page.next_page_token {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
        }
        Ok(announced)
    }

    /// Poll every `interval` until `stop` turns true. A failed pass is logged and tried again next time.
    pub async fn run(self: Arc<Self>, interval: Duration, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            match self.poll_once().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(announced = n, "storage watcher: new object generations"),
                Err(e) => tracing::warn!(error = %e, "storage watcher: listing failed; trying again"),
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// A function running as another process, as the router's destination: each event is POSTed to `url` as it
/// would be to an in-process function, and the process's status is the answer.
pub fn remote_function(url: &str) -> anyhow::Result<Router> {
    let url = reqwest::Url::parse(url)?;
    let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build()?;
    Ok(Router::new().fallback(forward).with_state((http, url)))
}

async fn forward(State((http, url)): State<(reqwest::Client, reqwest::Url)>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 * 1024 * 1024).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let mut target = url.clone();
    if parts.uri.path() != "/" {
        target.set_path(parts.uri.path());
    }
    let mut outgoing = http.post(target).body(body);
    for (name, value) in &parts.headers {
        if name.as_str().starts_with("ce-") || name == "content-type" {
            outgoing = outgoing.header(name.clone(), value.clone());
        }
    }
    match outgoing.send().await {
        Ok(answer) => {
            let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, Body::from(answer.bytes().await.unwrap_or_default())).into_response()
        }
        // Not running (yet): not an ack, so the router retries with the trigger's backoff.
        Err(e) => (StatusCode::BAD_GATEWAY, format!("destination unreachable: {e}")).into_response(),
    }
}
