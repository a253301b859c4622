//! The `sotto` binary as a script sees it: exit codes, stderr lines and `--json` output.
//!
//! End-to-end tests against a real `sottod` live elsewhere. Here a tiny fake control server
//! (a thread on a temporary Unix socket that plays a fixed script) stands in for the daemon,
//! only to check how its answers map to exit codes and to the shape of `--json` output.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};
use tempfile::TempDir;

/// `sotto` with a clean environment: no `SOTTO_SOCKET` from the developer's shell.
fn sotto() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sotto"));
    command.env_remove("SOTTO_SOCKET").stdin(Stdio::null());
    command
}

fn run(command: &mut Command) -> Result<Output> {
    command.output().context("running sotto")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// One move of the fake daemon.
enum Move {
    /// Read one request line.
    Read,
    /// Answer the last request read: `reply` gets its `jsonrpc` and `id`.
    Answer(Value),
    /// Write this line as it is.
    Write(String),
}

/// A fake daemon on a fresh socket that plays `script` on the first connection, then closes
/// it. The handle yields the requests it read.
struct FakeDaemon {
    _dir: TempDir,
    socket: PathBuf,
    thread: JoinHandle<Result<Vec<Value>>>,
}

impl FakeDaemon {
    fn start(script: Vec<Move>) -> Result<FakeDaemon> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("sottod.sock");
        let listener = UnixListener::bind(&socket)?;
        let thread = thread::spawn(move || play(&listener, script));
        Ok(FakeDaemon {
            _dir: dir,
            socket,
            thread,
        })
    }

    /// Answer each request with the next of `replies` (`{"result":..}` or `{"error":..}`).
    fn answering(replies: Vec<Value>) -> Result<FakeDaemon> {
        Self::start(
            replies
                .into_iter()
                .flat_map(|r| [Move::Read, Move::Answer(r)])
                .collect(),
        )
    }

    /// The requests the fake daemon read.
    fn requests(self) -> Result<Vec<Value>> {
        self.thread
            .join()
            .map_err(|_| anyhow!("the fake daemon thread panicked"))?
    }
}

fn play(listener: &UnixListener, script: Vec<Move>) -> Result<Vec<Value>> {
    let stream = accept_within(listener, Duration::from_secs(20))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut requests = Vec::new();
    for step in script {
        match step {
            Move::Read => {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 {
                    bail!("sotto closed the connection early");
                }
                requests.push(serde_json::from_str::<Value>(&line)?);
            }
            Move::Answer(mut reply) => {
                let id = requests.last().and_then(|r| r.get("id")).cloned();
                if let Some(object) = reply.as_object_mut() {
                    object.insert("jsonrpc".to_owned(), json!("2.0"));
                    object.insert("id".to_owned(), id.unwrap_or(Value::Null));
                }
                writeln!(writer, "{reply}")?;
            }
            Move::Write(line) => writeln!(writer, "{line}")?,
        }
    }
    Ok(requests)
}

fn accept_within(listener: &UnixListener, limit: Duration) -> Result<UnixStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).context("sotto did not connect"),
        }
    }
}

fn error(code: i64, message: &str) -> Value {
    json!({ "error": { "code": code, "message": message } })
}

fn assert_one_stderr_line(output: &Output, contains: &str) {
    let err = stderr(output);
    assert_eq!(err.lines().count(), 1, "stderr: {err:?}");
    assert!(err.contains(contains), "stderr {err:?} lacks {contains:?}");
    assert!(!err.contains("panicked"), "stderr: {err:?}");
}

// --- no daemon ----------------------------------------------------------------------------

#[test]
fn missing_socket_means_daemon_not_running() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("nothing-here.sock");
    let output = run(sotto().arg("--socket").arg(&socket).arg("status"))?;
    assert_eq!(output.status.code(), Some(3));
    assert_one_stderr_line(&output, "sottod");
    assert!(stderr(&output).contains(&socket.display().to_string()));
    assert!(output.stdout.is_empty());
    Ok(())
}

#[test]
fn stale_socket_file_means_daemon_not_running() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("sottod.sock");
    drop(UnixListener::bind(&socket)?); // the file stays, nobody listens
    let output = run(sotto().args(["contact", "list", "--socket"]).arg(&socket))?;
    assert_eq!(output.status.code(), Some(3));
    assert_one_stderr_line(&output, "start it with: sottod");
    Ok(())
}

#[test]
fn not_running_with_json_prints_an_error_object() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let output = run(sotto()
        .arg("--json")
        .arg("--socket")
        .arg(dir.path().join("x"))
        .arg("id"))?;
    assert_eq!(output.status.code(), Some(3));
    assert_one_stderr_line(&output, "sottod");
    let printed: Value = serde_json::from_str(&stdout(&output))?;
    assert_eq!(printed["error"]["code"], Value::Null);
    assert!(printed["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("sottod")));
    Ok(())
}

#[test]
fn socket_path_comes_from_sotto_socket_then_xdg_runtime_dir() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let from_env = dir.path().join("env.sock");
    let output = run(sotto().env("SOTTO_SOCKET", &from_env).arg("status"))?;
    assert_eq!(output.status.code(), Some(3));
    assert!(stderr(&output).contains(&from_env.display().to_string()));

    let output = run(sotto().env("XDG_RUNTIME_DIR", dir.path()).arg("status"))?;
    assert_eq!(output.status.code(), Some(3));
    let default = dir.path().join("sotto").join("sottod.sock");
    assert!(
        stderr(&output).contains(&default.display().to_string()),
        "{}",
        stderr(&output)
    );
    Ok(())
}

// --- no daemon needed ---------------------------------------------------------------------

#[test]
fn bad_arguments_are_usage_errors() -> Result<()> {
    let cases: [&[&str]; 6] = [
        &[],
        &["frobnicate"],
        &["send", "bob"],
        &["messages", "--limit", "many"],
        &["contact"],
        &["completions", "cmd.exe"],
    ];
    for args in cases {
        let output = run(sotto().args(args).arg("--socket=/nonexistent/sotto.sock"))?;
        assert_eq!(
            output.status.code(),
            Some(2),
            "sotto {args:?}: {}",
            stderr(&output)
        );
    }
    Ok(())
}

#[test]
fn completions_need_no_daemon() -> Result<()> {
    let output = run(sotto().args(["completions", "bash", "--socket=/nonexistent/sotto.sock"]))?;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("sotto"));
    Ok(())
}

#[test]
fn help_documents_the_exit_codes() -> Result<()> {
    let output = run(sotto().arg("--help"))?;
    assert_eq!(output.status.code(), Some(0));
    let help = stdout(&output);
    assert!(help.contains("Exit status"));
    for code in [
        "3  the daemon is not running",
        "5  unknown contact",
        "7  conflict",
    ] {
        assert!(help.contains(code), "--help lacks {code:?}");
    }
    Ok(())
}

// --- answers of a fake daemon -------------------------------------------------------------

#[test]
fn daemon_error_codes_become_exit_codes() -> Result<()> {
    let cases = [
        (-32001, 4),
        (-32003, 5),
        (-32004, 6),
        (-32602, 6),
        (-32006, 6),
        (-32002, 7),
        (-32005, 7),
        (-32603, 1),
        (-32601, 1),
    ];
    for (code, exit) in cases {
        let daemon = FakeDaemon::answering(vec![error(code, "it went wrong")])?;
        let output = run(sotto()
            .arg("--socket")
            .arg(&daemon.socket)
            .args(["contact", "verify", "bob"]))?;
        assert_eq!(output.status.code(), Some(exit), "daemon error {code}");
        assert_eq!(stderr(&output), "sotto: it went wrong\n");
        assert!(output.stdout.is_empty());
        let requests = daemon.requests()?;
        assert_eq!(requests[0]["method"], "contact.verify");
        assert_eq!(requests[0]["params"], json!({"contact": "bob"}));
    }
    Ok(())
}

#[test]
fn json_error_is_one_object_on_stdout() -> Result<()> {
    let daemon = FakeDaemon::answering(vec![error(-32003, "no contact named bob")])?;
    let output = run(sotto()
        .args(["send", "bob", "hi", "--json", "--socket"])
        .arg(&daemon.socket))?;
    assert_eq!(output.status.code(), Some(5));
    assert_one_stderr_line(&output, "no contact named bob");
    let out = stdout(&output);
    assert_eq!(out.lines().count(), 1);
    let printed: Value = serde_json::from_str(&out)?;
    assert_eq!(
        printed,
        json!({"error": {"code": -32003, "message": "no contact named bob"}})
    );
    Ok(())
}

#[test]
fn json_passes_the_result_through() -> Result<()> {
    let status = json!({"peer_id": "12D3KooWexample", "listen_addrs": ["/ip4/127.0.0.1/tcp/4001"],
        "connected_peers": [], "outbox": 2, "account": null, "version": "0.1.0", "extra": true});
    let daemon = FakeDaemon::answering(vec![json!({ "result": status })])?;
    let output = run(sotto()
        .arg("--json")
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("status"))?;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let out = stdout(&output);
    assert_eq!(out.lines().count(), 1);
    assert_eq!(serde_json::from_str::<Value>(&out)?, status);
    let requests = daemon.requests()?;
    assert_eq!(
        requests,
        [json!({"jsonrpc": "2.0", "id": 1, "method": "node.status", "params": {}})]
    );
    Ok(())
}

#[test]
fn send_from_stdin_prints_the_message_object() -> Result<()> {
    let message = json!({"id": "00112233445566778899aabbccddeeff", "contact": "bob",
        "direction": "out", "from": "me", "text": "two\nlines", "sent_at": 1764400000000_i64,
        "received_at": null, "state": "queued"});
    let daemon = FakeDaemon::answering(vec![json!({ "result": message })])?;
    let mut child = sotto()
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["send", "bob", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(b"two\nlines\n")?;
    let output = child.wait_with_output()?;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(serde_json::from_str::<Value>(&stdout(&output))?, message);
    let requests = daemon.requests()?;
    assert_eq!(requests[0]["method"], "message.send");
    assert_eq!(
        requests[0]["params"],
        json!({"to": "bob", "text": "two\nlines"})
    );
    Ok(())
}

#[test]
fn watch_json_prints_each_event_on_one_line() -> Result<()> {
    let event = |cursor: u64, kind: &str| {
        json!({"cursor": cursor, "kind": kind, "message": {"id": "00", "contact": "bob",
            "direction": "in", "from": "bob", "text": "hi", "sent_at": 1, "received_at": 2,
            "state": "received"}})
    };
    let notify =
        |params: &Value| json!({"jsonrpc": "2.0", "method": "event", "params": params}).to_string();
    let (first, second) = (event(5, "message.received"), event(6, "message.delivered"));
    let daemon = FakeDaemon::start(vec![
        Move::Read,
        Move::Answer(json!({"result": {"cursor": 4}})),
        Move::Write(notify(&first)),
        Move::Write(notify(&second)),
    ])?;
    let output = run(sotto()
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["watch", "--json"]))?;
    let lines: Vec<Value> = stdout(&output)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    // The daemon went away: not a success, and the user learns where to carry on from —
    // on stderr, and as the error object that ends the JSON stream.
    assert_eq!(output.status.code(), Some(1));
    assert_one_stderr_line(&output, "sotto watch --since 6");
    let [events @ .., last] = lines.as_slice() else {
        bail!("no output")
    };
    assert_eq!(events, [first, second]);
    assert_eq!(last["error"]["code"], Value::Null);
    assert!(last["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("--since 6")));
    assert_eq!(daemon.requests()?[0]["params"], json!({}));
    Ok(())
}

#[test]
fn garbage_or_silence_from_the_daemon_is_an_error_not_a_panic() -> Result<()> {
    let scripts = [
        vec![Move::Read, Move::Write("this is not json".to_owned())],
        vec![Move::Read, Move::Write("[1,2,3]".to_owned())],
        vec![
            Move::Read,
            Move::Write(r#"{"jsonrpc":"2.0","id":99,"result":{}}"#.to_owned()),
        ],
        vec![
            Move::Read,
            Move::Answer(json!({"result": {"name": "alice"}})),
        ],
        vec![Move::Read],
    ];
    for script in scripts {
        let daemon = FakeDaemon::start(script)?;
        let output = run(sotto().arg("--socket").arg(&daemon.socket).arg("id"))?;
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        assert_one_stderr_line(&output, "sotto: ");
        daemon.requests()?;
    }
    Ok(())
}

/// A path that exists but is not a socket: nothing to connect to.
#[test]
fn a_regular_file_as_socket_is_not_connectable() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("file");
    std::fs::write(&file, b"")?;
    let output = run(sotto().arg("--socket").arg(Path::new(&file)).arg("status"))?;
    assert_eq!(output.status.code(), Some(3));
    assert_one_stderr_line(&output, "sotto: ");
    Ok(())
}
