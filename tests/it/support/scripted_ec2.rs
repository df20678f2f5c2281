//! An EC2 (or DynamoDB) endpoint on loopback that answers from a script: each request takes the next canned
//! answer (an HTTP status and EC2's XML) and is recorded by its `Action`. The store's reading of
//! answers the emulator cannot give (error codes, 5xx, throttling) then goes through the real
//! SDK, its retry policy and a real HTTP exchange, with no test-only features of the SDK's
//! crates (which would make the tests rebuild aws-sdk-ec2).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tiny_http::{Header, Response, Server};

/// One canned answer.
pub struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    /// An EC2 error answer, as the service sends it.
    pub fn error(status: u16, code: &str) -> Self {
        let body = format!(
            "<Response><Errors><Error><Code>{code}</Code><Message>{code} happened</Message></Error></Errors>\
             <RequestID>req-1</RequestID></Response>"
        );
        Self { status, body }
    }

    /// A DynamoDB error answer (JSON 1.0 protocol, the code in `__type`), for the slot table.
    pub fn dynamodb_error(status: u16, code: &str) -> Self {
        let body = format!(r#"{{"__type":"com.amazonaws.dynamodb.v20120810#{code}","message":"{code} happened"}}"#);
        Self { status, body }
    }

    /// An STS error answer (sts:AssumeRole refused, say), as STS sends it.
    pub fn sts_error(status: u16, code: &str) -> Self {
        let body = format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>\
             <Code>{code}</Code><Message>{code} happened</Message></Error><RequestId>req-1</RequestId></ErrorResponse>"
        );
        Self { status, body }
    }

    /// CopySnapshot's answer: the new copy's id.
    pub fn copy_started(snapshot_id: &str) -> Self {
        Self::ok(&format!(
            "<CopySnapshotResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
             <requestId>req-1</requestId><snapshotId>{snapshot_id}</snapshotId></CopySnapshotResponse>"
        ))
    }

    /// DescribeSnapshots' answer with `items` (each an `<item>…</item>` of the snapshot set).
    pub fn snapshots(items: &str) -> Self {
        Self::ok(&format!(
            "<DescribeSnapshotsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
             <requestId>req-1</requestId><snapshotSet>{items}</snapshotSet></DescribeSnapshotsResponse>"
        ))
    }

    fn ok(body: &str) -> Self {
        Self { status: 200, body: body.to_owned() }
    }
}

/// The endpoint; stops when dropped.
pub struct ScriptedEc2 {
    server: Arc<Server>,
    actions: Arc<Mutex<Vec<String>>>,
    endpoint: String,
}

impl ScriptedEc2 {
    /// Answers `replies` in order; a request beyond them gets a 400 `UnexpectedCall`.
    pub fn start(replies: Vec<Reply>) -> Self {
        let server = Arc::new(Server::http("127.0.0.1:0").expect("a loopback port"));
        let endpoint = format!("http://{}", server.server_addr().to_ip().expect("an IP address"));
        let actions = Arc::new(Mutex::new(Vec::new()));
        let (serving, recorded) = (Arc::clone(&server), Arc::clone(&actions));
        std::thread::spawn(move || {
            let mut replies = VecDeque::from(replies);
            for mut request in serving.incoming_requests() {
                let mut form = String::new();
                let _ = request.as_reader().read_to_string(&mut form);
                let action =
                    form.split('&').find_map(|pair| pair.strip_prefix("Action=")).unwrap_or("(no Action)").to_owned();
                recorded.lock().expect("the record").push(action);
                let reply = replies.pop_front().unwrap_or_else(|| Reply::error(400, "UnexpectedCall"));
                let xml = Header::from_bytes("Content-Type", "text/xml;charset=UTF-8").expect("a header");
                let _ =
                    request.respond(Response::from_string(reply.body).with_status_code(reply.status).with_header(xml));
            }
        });
        Self { server, actions, endpoint }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The `Action` of every request so far, in order.
    pub fn actions(&self) -> Vec<String> {
        self.actions.lock().expect("the record").clone()
    }
}

impl Drop for ScriptedEc2 {
    fn drop(&mut self) {
        self.server.unblock();
    }
}
