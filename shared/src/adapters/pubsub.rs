//! Publishing on Google Cloud Pub/Sub with the official client (batching publisher, one per topic, built once
//! and reused). The client does not read `PUBSUB_EMULATOR_HOST` itself: when it is set, the endpoint is pointed
//! at the emulator with anonymous credentials.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use google_cloud_pubsub::client::{BasePublisher, Publisher};
use google_cloud_pubsub::model::Message;

use crate::ports::{EventPublisher, PortError, PortResult};

pub struct PubSubPublisher {
    project: String,
    base: BasePublisher,
    /// Publishers batch per topic, so each topic gets one, kept for the life of the process.
    topics: Mutex<HashMap<String, Publisher>>,
}

impl PubSubPublisher {
    /// Publish into `project`; on the emulator when `PUBSUB_EMULATOR_HOST` is set.
    pub async fn connect(project: &str) -> anyhow::Result<Self> {
        let emulator = std::env::var("PUBSUB_EMULATOR_HOST").ok().filter(|h| !h.is_empty());
        let base = match emulator {
            Some(host) => {
                BasePublisher::builder()
                    .with_endpoint(format!("http://{host}"))
                    .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
                    .build()
                    .await?
            }
            None => BasePublisher::builder().build().await?,
        };
        Ok(Self { project: project.to_owned(), base, topics: Mutex::new(HashMap::new()) })
    }

    fn publisher(&self, topic: &str) -> Publisher {
        let mut topics = self.topics.lock().expect("publisher map lock");
        topics
            .entry(topic.to_owned())
            .or_insert_with(|| self.base.publisher(format!("projects/{}/topics/{topic}", self.project)).build())
            .clone()
    }
}

#[async_trait]
impl EventPublisher for PubSubPublisher {
    async fn publish(
        &self,
        topic: &str,
        data: Bytes,
        attributes: BTreeMap<String, String>,
        ordering_key: Option<&str>,
    ) -> PortResult<String> {
        let mut message = Message::new().set_data(data).set_attributes(attributes);
        if let Some(key) = ordering_key {
            message = message.set_ordering_key(key);
        }
        self.publisher(topic).publish(message).await.map_err(|e| {
            let text = e.to_string();
            // A topic that does not exist will not start existing on a retry; everything else may pass.
            if text.contains("NOT_FOUND") || text.contains("Resource not found") || text.contains("404") {
                PortError::permanent(format!("pubsub: topic {topic}: {text}"))
            } else {
                PortError::retryable(format!("pubsub: topic {topic}: {text}"))
            }
        })
    }
}
