//! A small Lambda Runtime API on loopback, so the real `copy-snapshots` binary runs exactly as
//! Lambda runs it: it long-polls `/invocation/next`, and posts a response or an error.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tiny_http::{Header, Method, Request, Response, Server};
use tokio::sync::mpsc as async_mpsc;

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

/// What each request's thread needs: the queue of invocations the function has not fetched yet,
/// and where its answers go.
#[derive(Clone)]
struct Shared {
    next: Arc<Mutex<mpsc::Receiver<Invocation>>>,
    answers: async_mpsc::UnboundedSender<(String, Answer)>,
}

/// The runtime API server plus the function process it serves.
pub struct LambdaHarness {
    server: Arc<Server>,
    invocations: mpsc::Sender<Invocation>,
    answers: async_mpsc::UnboundedReceiver<(String, Answer)>,
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
        let (invocations, next) = mpsc::channel();
        let (answer_tx, answers) = async_mpsc::unbounded_channel();
        let shared = Shared { next: Arc::new(Mutex::new(next)), answers: answer_tx };
        let server = Arc::new(Server::http("127.0.0.1:0").expect("a loopback port"));
        let address = server.server_addr().to_ip().expect("an IP address").to_string();
        let accepting = Arc::clone(&server);
        // A thread per request: `next` blocks until the test sends an invocation.
        std::thread::spawn(move || {
            for request in accepting.incoming_requests() {
                let shared = shared.clone();
                std::thread::spawn(move || serve(request, &shared));
            }
        });

        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut harness = Self {
            server,
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
        self.invocations.send(Invocation { id: id.clone(), payload, deadline_ms }).expect("the API runs");
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

    /// The CloudWatch EMF documents the function printed so far, one per invocation.
    pub fn metrics_lines(&self) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["_aws"]["CloudWatchMetrics"].is_array())
            .collect()
    }
}

impl Drop for LambdaHarness {
    fn drop(&mut self) {
        self.kill();
        // Ends the accepting thread; a request thread still waiting for an invocation gets
        // `410 Gone` once the invocation queue's sender goes with `self`.
        self.server.unblock();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

fn serve(mut request: Request, shared: &Shared) {
    let mut body = Vec::new();
    if request.as_reader().read_to_end(&mut body).is_err() {
        let _ = request.respond(Response::empty(400));
        return;
    }
    let path = request.url().trim_start_matches("/2018-06-01/runtime/").to_owned();
    let parts: Vec<&str> = path.split('/').collect();
    let reply = match (request.method(), parts.as_slice()) {
        (Method::Get, ["invocation", "next"]) => next_invocation(shared),
        (Method::Post, ["invocation", id, "response"]) => {
            let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            answered(shared, id, Answer::Response(value))
        }
        (Method::Post, ["invocation", id, "error"]) => {
            let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let answer = Answer::Error {
                error_type: value["errorType"].as_str().unwrap_or_default().to_owned(),
                message: value["errorMessage"].as_str().unwrap_or_default().to_owned(),
            };
            answered(shared, id, answer)
        }
        (Method::Post, ["init", "error"]) => {
            let message = String::from_utf8_lossy(&body).into_owned();
            answered(shared, "init", Answer::Error { error_type: "InitError".to_owned(), message })
        }
        _ => Response::from_data(Vec::new()).with_status_code(404),
    };
    let _ = request.respond(reply);
}

fn next_invocation(shared: &Shared) -> Response<std::io::Cursor<Vec<u8>>> {
    let invocation = shared.next.lock().map_err(|_| ()).and_then(|next| next.recv().map_err(|_| ()));
    let Ok(invocation) = invocation else {
        return Response::from_data(Vec::new()).with_status_code(410);
    };
    let header = |name: &str, value: &str| Header::from_bytes(name, value).expect("a header");
    Response::from_data(invocation.payload)
        .with_header(header("lambda-runtime-aws-request-id", &invocation.id))
        .with_header(header("lambda-runtime-deadline-ms", &invocation.deadline_ms.to_string()))
        .with_header(header(
            "lambda-runtime-invoked-function-arn",
            "arn:aws:lambda:us-east-1:111122223333:function:copy-snapshots",
        ))
        .with_header(header("lambda-runtime-trace-id", "Root=1-00000000-000000000000000000000000"))
}

fn answered(shared: &Shared, id: &str, answer: Answer) -> Response<std::io::Cursor<Vec<u8>>> {
    let _ = shared.answers.send((id.to_owned(), answer));
    Response::from_data(Vec::new()).with_status_code(202)
}
