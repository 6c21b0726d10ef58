//! Test fixtures: the Kubernetes API server as kube-rs's tower-test mock
//! (no API server can run here), answered request by request in the order
//! a scenario expects, and a real `patronus-controlplane` process.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};

use crate::controller::Context;
use crate::controlplane;
use crate::dataplane::Settings;
use crate::metrics::Metrics;

/// The mock API server's side of the connection.
pub struct ApiServer(tower_test::mock::Handle<Request<Body>, Response<Body>>);

/// One request the operator made, as the mock saw it.
#[derive(Debug)]
pub struct Seen {
    /// GET, POST, PATCH, ...
    pub method: Method,
    /// Path and query.
    pub uri: String,
    /// The JSON body (Null when empty).
    pub body: Value,
}

/// A kube client wired to a mock API server.
pub fn mock_client() -> (kube::Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), ApiServer(handle))
}

impl ApiServer {
    /// Waits for the next request, checks its method and that its path
    /// starts with `path`, and answers `status` with `reply(&seen)`.
    pub async fn expect(
        &mut self,
        method: Method,
        path: &str,
        status: StatusCode,
        reply: impl FnOnce(&Seen) -> Value,
    ) -> Seen {
        let (request, send) = tokio::time::timeout(Duration::from_secs(10), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
            .unwrap_or_else(|| panic!("the client went away; expected {method} {path}"));
        let uri = request.uri().to_string();
        let seen_method = request.method().clone();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let seen = Seen {
            method: seen_method,
            uri,
            body,
        };
        assert_eq!(
            seen.method, method,
            "unexpected request {} {}",
            seen.method, seen.uri
        );
        assert!(
            seen.uri.starts_with(path),
            "expected {method} {path}, got {} {}",
            seen.method,
            seen.uri
        );
        let answer = serde_json::to_vec(&reply(&seen)).unwrap();
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(answer))
                .unwrap(),
        );
        seen
    }

    /// A request answered with its own body (creates, applies).
    pub async fn echo(&mut self, method: Method, path: &str) -> Seen {
        self.expect(method, path, StatusCode::OK, |seen| seen.body.clone())
            .await
    }

    /// A GET answered 404.
    pub async fn not_found(&mut self, path: &str) -> Seen {
        self.expect(Method::GET, path, StatusCode::NOT_FOUND, |_| status_404())
            .await
    }

    /// An Event published about the object, returning its reason.
    pub async fn event(&mut self, namespace: &str) -> String {
        let seen = self
            .echo(
                Method::POST,
                &format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events"),
            )
            .await;
        seen.body["reason"].as_str().unwrap_or_default().to_owned()
    }

    /// A status patch answered with `object` carrying the patched status.
    pub async fn status_patch(&mut self, path: &str, object: &Value) -> Value {
        let object = object.clone();
        let seen = self
            .expect(
                Method::PATCH,
                &format!("{path}/status"),
                StatusCode::OK,
                move |seen| {
                    let mut o = object;
                    o["status"] = seen.body["status"].clone();
                    o
                },
            )
            .await;
        seen.body["status"].clone()
    }

    /// The next request, whatever it is, with its content type and the means
    /// to answer it (or to leave it waiting, as a watch does); `None` when
    /// the client went away.
    pub async fn next(&mut self) -> Option<(Seen, String, Pending)> {
        let (request, send) = self.0.next_request().await?;
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let uri = request.uri().to_string();
        let method = request.method().clone();
        let bytes = request.into_body().collect_bytes().await.ok()?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Some((Seen { method, uri, body }, content_type, Pending(send)))
    }

    /// Answers the next request with whatever `answer` makes of it, whatever
    /// it is; `None` when the client went away.
    pub async fn answer(
        &mut self,
        answer: impl FnOnce(&Seen, &str) -> (StatusCode, Value),
    ) -> Option<Seen> {
        let (seen, content_type, pending) = self.next().await?;
        let (status, value) = answer(&seen, &content_type);
        pending.send(status, &value);
        Some(seen)
    }

    /// Asserts that the operator makes no further request for a while.
    pub async fn quiet(&mut self) {
        if let Ok(Some((request, _))) =
            tokio::time::timeout(Duration::from_millis(300), self.0.next_request()).await
        {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

/// A request waiting for its answer.
pub struct Pending(tower_test::mock::SendResponse<Response<Body>>);

impl Pending {
    /// Answers `status` with `value` as JSON.
    pub fn send(self, status: StatusCode, value: &Value) {
        self.0.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(value).unwrap()))
                .unwrap(),
        );
    }
}

/// The API server's 404 Status.
pub fn status_404() -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "not found", "reason": "NotFound", "code": 404
    })
}

/// The real control plane, killed when dropped, with its database in a
/// temporary directory.
pub struct ControlPlane {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn controlplane_binary() -> PathBuf {
    // target/debug/deps/<test> -> target/debug/patronus-controlplane
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join("patronus-controlplane");
    assert!(
        path.exists(),
        "{} is missing: cargo build --bin patronus-controlplane",
        path.display()
    );
    path
}

impl ControlPlane {
    /// Starts one on an ephemeral loopback port.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(controlplane_binary())
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", ""])
            .arg("--db")
            .arg(dir.path().join("cp.redb"))
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start patronus-controlplane");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("control plane listening") {
                    if let Some(rest) = line.split("addr=").nth(1) {
                        let _ = tx.send(
                            rest.split_whitespace()
                                .next()
                                .unwrap_or_default()
                                .to_owned(),
                        );
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the control plane listens");
        ControlPlane {
            child,
            url: format!("http://{addr}"),
            _dir: dir,
        }
    }

    /// A client of its API.
    pub fn client(&self) -> controlplane::Client {
        controlplane::connect_lazy(&patronus_proto::client::ClientOptions {
            server: self.url.clone(),
            ..Default::default()
        })
        .unwrap()
    }
}

/// A reconcile context over the mock API server and a control plane.
pub fn context(client: kube::Client, cp: controlplane::Client) -> Arc<Context> {
    let settings = Settings {
        token_secret: Some("patronus-controlplane-token".into()),
        ..Settings::default()
    };
    Arc::new(Context::new(
        client,
        cp,
        settings,
        Arc::new(Metrics::default()),
        Some("operator-0".into()),
    ))
}
