//! Values beyond the server's message limit: they go through the namespace's object store
//! (`NS_payloads`, chunked by the server) and the message carries only their name, in the
//! [`OBJECT`] header. A caller deletes its task's value when the task ends, and an ending once
//! it has read it; whatever a vanished process leaves behind expires after a day.

use std::time::Duration;

use async_nats::jetstream::object_store::{self, ObjectMetadata, ObjectStore};
use async_nats::jetstream::{self, stream::StorageType};
use tokio::io::AsyncReadExt;
use tokio::sync::OnceCell;

use super::wire::Names;

/// The header that names a message's value in the object store.
pub(crate) const OBJECT: &str = "Parallel-Object";
/// Room left in a message for its subject and headers.
const HEADROOM: usize = 8 * 1024;
/// The object store's chunk, at most (async-nats's default); less under a lower message limit.
const CHUNK: usize = 128 * 1024;
/// How long an object nobody took is kept.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The object store of one namespace, opened when a value first needs it.
pub(crate) struct Payloads {
    jetstream: jetstream::Context,
    bucket: String,
    store: OnceCell<ObjectStore>,
    /// The largest value a message carries itself.
    limit: usize,
    /// The size of the object store's chunks: each is a message, so within the server's limit.
    chunk: usize,
}

impl Payloads {
    pub(crate) fn new(jetstream: jetstream::Context, names: &Names, max_payload: usize) -> Self {
        Payloads {
            jetstream,
            bucket: names.bucket(),
            store: OnceCell::new(),
            limit: max_payload.saturating_sub(HEADROOM),
            chunk: max_payload.saturating_sub(HEADROOM).max(max_payload / 2).clamp(1, CHUNK),
        }
    }

    /// Whether a value of `len` bytes travels in its message.
    pub(crate) fn fits(&self, len: usize) -> bool {
        len <= self.limit
    }

    async fn store(&self) -> Result<&ObjectStore, String> {
        self.store
            .get_or_try_init(|| async {
                if let Ok(store) = self.jetstream.get_object_store(&self.bucket).await {
                    return Ok(store);
                }
                self.jetstream
                    .create_object_store(object_store::Config {
                        bucket: self.bucket.clone(),
                        description: Some("values of parallel beyond the message limit".into()),
                        max_age: MAX_AGE,
                        storage: StorageType::File,
                        ..Default::default()
                    })
                    .await
                    .map_err(|error| {
                        format!("cannot open the object store {}: {error}", self.bucket)
                    })
            })
            .await
    }

    /// Stores `bytes` as `name`.
    pub(crate) async fn put(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let store = self.store().await?;
        let mut reader = bytes;
        let meta = ObjectMetadata {
            name: name.to_owned(),
            chunk_size: Some(self.chunk),
            ..Default::default()
        };
        store
            .put(meta, &mut reader)
            .await
            .map(drop)
            .map_err(|error| format!("cannot store a value of {} bytes: {error}", bytes.len()))
    }

    /// Reads the object `name` and deletes it (an ending: read once, by its caller); `max` bytes
    /// at most.
    pub(crate) async fn take(&self, name: &str, max: usize) -> Result<Vec<u8>, String> {
        let bytes = self.read(name, max).await?;
        self.delete(name).await;
        Ok(bytes)
    }

    /// Reads the object `name`, leaving it (a task's value: a task handed back or delivered
    /// again is read again; its caller deletes it when the task ends); `max` bytes at most.
    pub(crate) async fn read(&self, name: &str, max: usize) -> Result<Vec<u8>, String> {
        let store = self.store().await?;
        let mut object =
            store.get(name).await.map_err(|error| format!("cannot read object {name}: {error}"))?;
        let size = object.info().size;
        if size > max {
            return Err(format!("object {name} has {size} bytes, over the limit of {max}"));
        }
        let mut bytes = Vec::with_capacity(size);
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|error| format!("cannot read object {name}: {error}"))?;
        Ok(bytes)
    }

    /// Deletes the object `name`, if it is there.
    pub(crate) async fn delete(&self, name: &str) {
        if let Ok(store) = self.store().await
            && let Err(error) = store.delete(name).await
        {
            tracing::debug!(name, %error, "an object was not deleted");
        }
    }
}
