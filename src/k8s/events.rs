//! Kubernetes Events for what users must see (a conflict copy written, a
//! mount recovered, a volume full), on the claim and the pods using it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::PostParams;
use kube::{Api, Client};

use super::K8sError;

/// The same event on the same object is not repeated more often than this.
const REPEAT_AFTER: Duration = Duration::from_secs(60);

/// An object an Event is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Involved {
    /// `PersistentVolumeClaim` or `Pod`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

impl Involved {
    pub fn claim(namespace: &str, name: &str) -> Self {
        Self {
            kind: "PersistentVolumeClaim",
            namespace: namespace.into(),
            name: name.into(),
            uid: None,
        }
    }

    pub fn pod(namespace: &str, name: &str, uid: &str) -> Self {
        Self {
            kind: "Pod",
            namespace: namespace.into(),
            name: name.into(),
            uid: (!uid.is_empty()).then(|| uid.to_string()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Records core/v1 Events as `component` on `host`.
pub struct Recorder {
    client: Client,
    component: String,
    host: String,
    recent: Mutex<HashMap<(Involved, String), Instant>>,
}

impl Recorder {
    pub fn new(client: Client, component: &str, host: &str) -> Self {
        Self {
            client,
            component: component.into(),
            host: host.into(),
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// Post one Event; a repeat within [`REPEAT_AFTER`] is skipped (Ok(false)).
    pub async fn record(
        &self,
        about: &Involved,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> Result<bool, K8sError> {
        {
            let mut recent = self.recent.lock().unwrap();
            let key = (about.clone(), reason.to_string());
            if recent.get(&key).is_some_and(|t| t.elapsed() < REPEAT_AFTER) {
                return Ok(false);
            }
            recent.retain(|_, t| t.elapsed() < REPEAT_AFTER);
            recent.insert(key, Instant::now());
        }
        let now = k8s_openapi::jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", about.name)),
                namespace: Some(about.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some(about.kind.into()),
                namespace: Some(about.namespace.clone()),
                name: Some(about.name.clone()),
                uid: about.uid.clone(),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(
                match kind {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: Some(self.host.clone()),
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.host.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            action: Some(reason.into()),
            count: Some(1),
            ..Default::default()
        };
        Api::<Event>::namespaced(self.client.clone(), &about.namespace)
            .create(&PostParams::default(), &event)
            .await?;
        Ok(true)
    }
}
