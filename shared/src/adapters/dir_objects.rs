//! The embedded object store: a directory per bucket. Objects are streamed to a temporary file, hashed (MD5 and
//! CRC32C, as GCS reports them), fsynced and renamed into place, so a reader never sees half an object. Metadata
//! and generation live in a sidecar under `.meta/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::ports::{ByteStream, NewObject, ObjectInfo, ObjectPage, ObjectStore, PortError, PortResult};

#[derive(Clone)]
pub struct DirObjectStore {
    root: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Sidecar {
    generation: i64,
    size: u64,
    content_type: String,
    md5: String,
    crc32c: String,
    metadata: BTreeMap<String, String>,
    created: DateTime<Utc>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 1024
        && !name.starts_with('/')
        && !name.starts_with(".meta")
        && !name.starts_with(".tmp")
        && name.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && !name.contains('\0')
}

fn io_err(what: &str, e: std::io::Error) -> PortError {
    PortError::retryable(format!("object store: {what}: {e}"))
}

impl DirObjectStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn paths(&self, bucket: &str, name: &str) -> PortResult<(PathBuf, PathBuf)> {
        if !valid_name(bucket) || bucket.contains('/') || !valid_name(name) {
            return Err(PortError::permanent(format!("invalid object name {bucket}/{name}")));
        }
        Ok((self.root.join(bucket).join(name), self.root.join(".meta").join(bucket).join(format!("{name}.json"))))
    }

    async fn read_sidecar(path: &Path) -> PortResult<Option<Sidecar>> {
        match tokio::fs::read(path).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| PortError::permanent(format!("object store: corrupt metadata {}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read metadata", e)),
        }
    }

    fn info(bucket: &str, name: &str, s: Sidecar) -> ObjectInfo {
        ObjectInfo {
            bucket: bucket.to_owned(),
            name: name.to_owned(),
            generation: s.generation,
            size: s.size,
            content_type: s.content_type,
            md5_base64: s.md5,
            crc32c_base64: s.crc32c,
            metadata: s.metadata,
            created: s.created,
        }
    }
}

async fn write_atomically(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_dir.join(uuid::Uuid::new_v4().to_string());
    let mut f = tokio::fs::File::create(&tmp).await?;
    f.write_all(bytes).await?;
    f.sync_all().await?;
    drop(f);
    tokio::fs::create_dir_all(dest.parent().expect("object paths have a parent")).await?;
    tokio::fs::rename(&tmp, dest).await
}

#[async_trait]
impl ObjectStore for DirObjectStore {
    async fn put(&self, object: NewObject<'_>, mut body: ByteStream) -> PortResult<ObjectInfo> {
        let (data_path, meta_path) = self.paths(object.bucket, object.name)?;
        let tmp_dir = self.root.join(".tmp");
        tokio::fs::create_dir_all(&tmp_dir).await.map_err(|e| io_err("create tmp dir", e))?;
        let tmp = tmp_dir.join(uuid::Uuid::new_v4().to_string());
        let result: PortResult<(u64, String, String)> = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| io_err("create", e))?;
            let (mut size, mut md5, mut crc) = (0u64, Md5::new(), 0u32);
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| PortError::retryable(format!("object store: source stream: {e}")))?;
                size += chunk.len() as u64;
                if size > object.max_bytes {
                    return Err(PortError::permanent(format!("object exceeds {} bytes", object.max_bytes)));
                }
                md5.update(&chunk);
                crc = crc32c::crc32c_append(crc, &chunk);
                file.write_all(&chunk).await.map_err(|e| io_err("write", e))?;
            }
            file.sync_all().await.map_err(|e| io_err("fsync", e))?;
            Ok((size, B64.encode(md5.finalize()), B64.encode(crc.to_be_bytes())))
        }
        .await;
        let (size, md5, crc32c) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        // Generations increase per name, like GCS's (microseconds since the epoch, bumped past the previous one).
        let previous = Self::read_sidecar(&meta_path).await?.map_or(0, |s| s.generation);
        let now = Utc::now();
        let sidecar = Sidecar {
            generation: now.timestamp_micros().max(previous + 1),
            size,
            content_type: object.content_type.to_owned(),
            md5,
            crc32c,
            metadata: object.metadata,
            created: now,
        };
        let data_dir = data_path.parent().expect("object paths have a parent");
        tokio::fs::create_dir_all(data_dir).await.map_err(|e| io_err("create bucket dir", e))?;
        tokio::fs::rename(&tmp, &data_path).await.map_err(|e| io_err("rename", e))?;
        let meta = serde_json::to_vec(&sidecar).expect("sidecar serializes");
        write_atomically(&tmp_dir, &meta_path, &meta).await.map_err(|e| io_err("write metadata", e))?;
        Ok(Self::info(object.bucket, object.name, sidecar))
    }

    async fn head(&self, bucket: &str, name: &str) -> PortResult<Option<ObjectInfo>> {
        let (_, meta_path) = self.paths(bucket, name)?;
        Ok(Self::read_sidecar(&meta_path).await?.map(|s| Self::info(bucket, name, s)))
    }

    async fn get(&self, bucket: &str, name: &str) -> PortResult<Option<(ObjectInfo, Bytes)>> {
        let (data_path, meta_path) = self.paths(bucket, name)?;
        let Some(sidecar) = Self::read_sidecar(&meta_path).await? else {
            return Ok(None);
        };
        let bytes = tokio::fs::read(&data_path).await.map_err(|e| io_err("read", e))?;
        Ok(Some((Self::info(bucket, name, sidecar), Bytes::from(bytes))))
    }

    async fn delete(&self, bucket: &str, name: &str) -> PortResult<bool> {
        let (data_path, meta_path) = self.paths(bucket, name)?;
        // The sidecar is what makes an object exist (head/list read it), so it goes first: a crash in between
        // leaves an orphan data file, never a listed object without data.
        match tokio::fs::remove_file(&meta_path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // No object; but a delete that crashed between the two files left its bytes, and an erasure
                // repeating the delete must not leave them behind.
                let _ = tokio::fs::remove_file(&data_path).await;
                return Ok(false);
            }
            Err(e) => return Err(io_err("delete metadata", e)),
        }
        match tokio::fs::remove_file(&data_path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(io_err("delete", e)),
        }
    }

    async fn list(&self, bucket: &str, prefix: &str, token: Option<&str>, size: usize) -> PortResult<ObjectPage> {
        if !valid_name(bucket) || bucket.contains('/') {
            return Err(PortError::permanent(format!("invalid bucket name {bucket}")));
        }
        let root = self.root.join(".meta").join(bucket);
        let mut names = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("list", e)),
            };
            while let Some(entry) = entries.next_entry().await.map_err(|e| io_err("list", e))? {
                let path = entry.path();
                if entry.file_type().await.map_err(|e| io_err("list", e))?.is_dir() {
                    dirs.push(path);
                } else if let Some(name) = path
                    .strip_prefix(&root)
                    .ok()
                    .and_then(|p| p.to_str())
                    .and_then(|p| p.strip_suffix(".json"))
                    .filter(|n| n.starts_with(prefix) && token.is_none_or(|t| *n > t))
                {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort();
        let more = names.len() > size;
        names.truncate(size);
        let mut objects = Vec::with_capacity(names.len());
        for name in &names {
            // Deleted between the walk and now: not part of the listing.
            if let Some(info) = self.head(bucket, name).await? {
                objects.push(info);
            }
        }
        Ok(ObjectPage { objects, next_page_token: if more { names.last().cloned() } else { None } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(chunks: Vec<&'static [u8]>) -> ByteStream {
        Box::pin(futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c)))))
    }

    #[tokio::test]
    async fn objects_round_trip_with_metadata_and_growing_generations() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirObjectStore::new(dir.path());
        let meta = BTreeMap::from([("tenant_id".to_owned(), "acme".to_owned())]);
        let new = |max| NewObject {
            bucket: "rec",
            name: "acme/CAL1.mp3",
            content_type: "audio/mpeg",
            metadata: meta.clone(),
            max_bytes: max,
        };
        let a = store.put(new(100), stream(vec![b"hello ", b"world"])).await.unwrap();
        assert_eq!(a.size, 11);
        assert_eq!(a.md5_base64, "XrY7u+Ae7tCTyyK7j1rNww==");
        let (info, bytes) = store.get("rec", "acme/CAL1.mp3").await.unwrap().unwrap();
        assert_eq!((&bytes[..], info.metadata["tenant_id"].as_str()), (&b"hello world"[..], "acme"));
        let b = store.put(new(100), stream(vec![b"again"])).await.unwrap();
        assert!(b.generation > a.generation);
        // Too large: fails and leaves the previous object untouched.
        assert!(store.put(new(3), stream(vec![b"toolarge"])).await.is_err());
        assert_eq!(&store.get("rec", "acme/CAL1.mp3").await.unwrap().unwrap().1[..], b"again");
        assert!(store.head("rec", "../etc/passwd").await.is_err());
        assert!(store.head("rec", "acme/none.mp3").await.unwrap().is_none());
    }
}
