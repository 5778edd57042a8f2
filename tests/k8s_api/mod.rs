//! A scripted Kubernetes API server for tests: plain HTTP/1.1 on loopback,
//! answering the few endpoints jax-csi uses from state the test sets, and
//! recording every request (and every Event posted).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Default)]
pub struct State {
    /// Node name → labels.
    pub nodes: HashMap<String, BTreeMap<String, String>>,
    /// Volume handles of this driver's PersistentVolumes.
    pub pv_handles: Vec<String>,
    /// When set, listing PersistentVolumes fails with a 500.
    pub fail_pv_list: bool,
    /// (namespace, name) → uid.
    pub pods: HashMap<(String, String), String>,
    /// Every Event posted, as JSON.
    pub events: Vec<serde_json::Value>,
    /// `METHOD path` of every request.
    pub requests: Vec<String>,
}

pub struct ScriptedApi {
    pub url: String,
    pub state: Arc<Mutex<State>>,
}

impl ScriptedApi {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(conn, s.clone()));
            }
        });
        Self { url, state }
    }

    pub fn events_with_reason(&self, reason: &str) -> Vec<serde_json::Value> {
        self.state
            .lock()
            .unwrap()
            .events
            .iter()
            .filter(|e| e["reason"] == reason)
            .cloned()
            .collect()
    }

    pub fn count(&self, request_prefix: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.starts_with(request_prefix))
            .count()
    }
}

fn not_found(what: &str) -> (u16, serde_json::Value) {
    (
        404,
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{what} not found"), "reason": "NotFound", "code": 404}),
    )
}

fn route(state: &Mutex<State>, method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let mut st = state.lock().unwrap();
    st.requests.push(format!("{method} {path}"));
    let path_only = path.split('?').next().unwrap_or_default();
    let parts: Vec<&str> = path_only.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["api", "v1", "nodes"]) => {
            let items: Vec<serde_json::Value> = st
                .nodes
                .iter()
                .map(|(name, labels)| {
                    serde_json::json!({"apiVersion": "v1", "kind": "Node",
                        "metadata": {"name": name, "labels": labels}})
                })
                .collect();
            (
                200,
                serde_json::json!({"apiVersion": "v1", "kind": "NodeList",
                    "metadata": {"resourceVersion": "1"}, "items": items}),
            )
        }
        ("GET", ["api", "v1", "nodes", name]) => match st.nodes.get(*name) {
            Some(labels) => (
                200,
                serde_json::json!({"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "labels": labels}}),
            ),
            None => not_found("node"),
        },
        ("GET", ["api", "v1", "persistentvolumes"]) => {
            if st.fail_pv_list {
                return (
                    500,
                    serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "message": "etcd is sad", "reason": "InternalError", "code": 500}),
                );
            }
            let items: Vec<serde_json::Value> = st
                .pv_handles
                .iter()
                .map(|h| {
                    serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolume",
                        "metadata": {"name": format!("pv-{h}")},
                        "spec": {"csi": {"driver": "csi.jax.dev", "volumeHandle": h}}})
                })
                .chain(std::iter::once(
                    serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolume",
                    "metadata": {"name": "other-driver"},
                    "spec": {"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-123"}}}),
                ))
                .collect();
            (
                200,
                serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolumeList",
                    "metadata": {"resourceVersion": "1"}, "items": items}),
            )
        }
        ("GET", ["api", "v1", "namespaces", ns, "pods", name]) => {
            match st.pods.get(&(ns.to_string(), name.to_string())) {
                Some(uid) => (
                    200,
                    serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": name, "namespace": ns, "uid": uid}}),
                ),
                None => not_found("pod"),
            }
        }
        ("POST", ["api", "v1", "namespaces", ns, "events"]) => {
            let mut ev: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            ev["metadata"]["name"] = serde_json::json!(format!("ev-{}", st.events.len()));
            ev["metadata"]["namespace"] = serde_json::json!(ns);
            st.events.push(ev.clone());
            (201, ev)
        }
        _ => not_found("path"),
    }
}

async fn serve(conn: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    let (read, mut write) = conn.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut it = line.split_whitespace();
        let (method, path) = (
            it.next().unwrap_or_default().to_string(),
            it.next().unwrap_or_default().to_string(),
        );
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if read.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if read.read_exact(&mut body).await.is_err() {
            return;
        }
        let (code, json) = route(&state, &method, &path, &body);
        let text = json.to_string();
        let reason = match code {
            200 => "OK",
            201 => "Created",
            404 => "Not Found",
            _ => "Internal Server Error",
        };
        let head = format!(
            "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            text.len()
        );
        if write.write_all(head.as_bytes()).await.is_err()
            || write.write_all(text.as_bytes()).await.is_err()
        {
            return;
        }
    }
}
