//! A small Lambda Runtime API on loopback, so the real `copy-snapshots` binary runs exactly as
//! Lambda runs it: it long-polls `/invocation/next`, and posts a response or an error.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::{Mutex, mpsc};

/// What the function answered.
#[derive(Debug, Clone)]
pub enum Answer {
    Response(Value),
    Error { error_type: String, message: String },
}

impl Answer {
    pub fn response(self) -> Value {
        match self {
            Self::Response(v) => v,
            Self::Error { error_type, message } => panic!("expected a response, got {error_type}: {message}"),
        }
    }

    pub fn error(self) -> (String, String) {
        match self {
            Self::Error { error_type, message } => (error_type, message),
            Self::Response(v) => panic!("expected an error, got {v}"),
        }
    }
}

struct Invocation {
    id: String,
    payload: Vec<u8>,
    deadline_ms: u128,
}

#[derive(Clone)]
struct Shared {
    next: Arc<Mutex<mpsc::Receiver<Invocation>>>,
    answers: mpsc::Sender<(String, Answer)>,
}

/// The runtime API server plus the function process it serves.
pub struct LambdaHarness {
    invocations: mpsc::Sender<Invocation>,
    answers: mpsc::Receiver<(String, Answer)>,
    child: Option<Child>,
    log_path: PathBuf,
    counter: usize,
    env: HashMap<String, String>,
    address: String,
}

impl LambdaHarness {
    /// Starts the API and the binary with `env` on top of the test's environment (which
    /// carries `AWS_ENDPOINT_URL` and credentials from `make test`).
    pub async fn start(env: &[(&str, &str)]) -> Self {
        assert!(
            std::env::var("MOTO_ENDPOINT").is_ok(),
            "these tests need the EC2 emulator: run them with `make test` (scripts/with-moto cargo test)"
        );
        let (invocations, next) = mpsc::channel(16);
        let (answer_tx, answers) = mpsc::channel(16);
        let shared = Shared { next: Arc::new(Mutex::new(next)), answers: answer_tx };
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let address = listener.local_addr().expect("an address").to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut harness = Self {
            invocations,
            answers,
            child: None,
            log_path: std::env::temp_dir().join(format!(
                "copy-snapshots-{}-{}.log",
                std::process::id(),
                address.replace(':', "-")
            )),
            counter: 0,
            env,
            address,
        };
        harness.spawn();
        harness
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log_path).expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_copy-snapshots"));
        command
            .env("AWS_LAMBDA_RUNTIME_API", &self.address)
            .env("AWS_LAMBDA_FUNCTION_NAME", "copy-snapshots")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
            .env("AWS_LAMBDA_LOG_LEVEL", "INFO")
            .env_remove("RUST_LOG")
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log);
        self.child = Some(command.spawn().expect("the copy-snapshots binary starts"));
    }

    /// Invokes the function with `payload` and a deadline `timeout` away; waits for its answer.
    pub async fn invoke(&mut self, payload: &Value, timeout: Duration) -> Answer {
        self.invoke_raw(serde_json::to_vec(payload).expect("JSON"), timeout).await
    }

    /// Invokes with any bytes as the payload, JSON or not.
    pub async fn invoke_raw(&mut self, payload: Vec<u8>, timeout: Duration) -> Answer {
        let id = self.send(payload, timeout).await;
        self.answer(&id, timeout + Duration::from_secs(30)).await
    }

    /// Hands the function an invocation without waiting for its answer; returns its id.
    pub async fn send(&mut self, payload: Vec<u8>, timeout: Duration) -> String {
        self.counter += 1;
        let id = format!("request-{}", self.counter);
        let deadline = SystemTime::now() + timeout;
        let deadline_ms = deadline.duration_since(UNIX_EPOCH).expect("after 1970").as_millis();
        self.invocations.send(Invocation { id: id.clone(), payload, deadline_ms }).await.expect("the API runs");
        id
    }

    /// Waits for the answer to invocation `id`.
    pub async fn answer(&mut self, id: &str, wait: Duration) -> Answer {
        let (answered, answer) = tokio::time::timeout(wait, self.answers.recv())
            .await
            .unwrap_or_else(|_| panic!("no answer within {wait:?}; log:\n{}", self.log()))
            .expect("the API runs");
        assert_eq!(answered, id, "answer for the wrong invocation ({answer:?}); log:\n{}", self.log());
        answer
    }

    /// Kills the function process, as a crash or Lambda's timeout would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the function process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The function process's peak resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let pid = self.child.as_ref().expect("a running function").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }

    /// Everything the function logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for LambdaHarness {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

async fn next_invocation(State(shared): State<Shared>) -> impl IntoResponse {
    let invocation = shared.next.lock().await.recv().await;
    let Some(invocation) = invocation else {
        return (StatusCode::GONE, HeaderMap::new(), Bytes::new());
    };
    let mut headers = HeaderMap::new();
    let header = |v: String| HeaderValue::from_str(&v).expect("a header value");
    headers.insert("lambda-runtime-aws-request-id", header(invocation.id));
    headers.insert("lambda-runtime-deadline-ms", header(invocation.deadline_ms.to_string()));
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        header("arn:aws:lambda:us-east-1:111122223333:function:copy-snapshots".to_owned()),
    );
    headers.insert("lambda-runtime-trace-id", header("Root=1-00000000-000000000000000000000000".to_owned()));
    (StatusCode::OK, headers, Bytes::from(invocation.payload))
}

async fn response(State(shared): State<Shared>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let _ = shared.answers.send((id, Answer::Response(value))).await;
    StatusCode::ACCEPTED
}

async fn error(State(shared): State<Shared>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let answer = Answer::Error {
        error_type: value["errorType"].as_str().unwrap_or_default().to_owned(),
        message: value["errorMessage"].as_str().unwrap_or_default().to_owned(),
    };
    let _ = shared.answers.send((id, answer)).await;
    StatusCode::ACCEPTED
}

async fn init_error(State(shared): State<Shared>, body: Bytes) -> StatusCode {
    let message = String::from_utf8_lossy(&body).into_owned();
    let _ =
        shared.answers.send(("init".to_owned(), Answer::Error { error_type: "InitError".to_owned(), message })).await;
    StatusCode::ACCEPTED
}
