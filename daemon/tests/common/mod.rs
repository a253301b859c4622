//! Fixtures for tests that run real `sottod` processes: start one by name, talk to its
//! control socket, stop or kill it, wait for something to happen (always with a deadline).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod inproc;
pub mod raw;

/// A temporary root for a scenario's nodes (mode 0700, removed at the end).
pub fn root() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running (or stopped) `sottod` process.
pub struct Daemon {
    pub name: String,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub port: u16,
    pub extra: Vec<String>,
    /// Print the node's address in its card (`--publish-address`).
    pub publish: bool,
    /// Where its log goes, and the log filter (`SOTTO_LOG`); `None`: standard error (or a
    /// file in `SOTTO_TEST_LOG_DIR` if set), filtered as `SOTTO_TEST_LOG` says.
    pub log: Option<(PathBuf, String)>,
    child: Option<Child>,
}

impl Daemon {
    /// Start a daemon called `name` under `root`, listening on a fresh loopback port.
    pub fn start(root: &std::path::Path, name: &str) -> Daemon {
        Self::start_with(root, name, &[])
    }

    pub fn start_with(root: &std::path::Path, name: &str, extra: &[&str]) -> Daemon {
        Self::start_node(root, name, true, extra)
    }

    /// Start a node whose card carries no address, joined to the network through `hub`.
    pub fn join(root: &std::path::Path, name: &str, hub: &Daemon, extra: &[&str]) -> Daemon {
        let mut args = vec!["--bootstrap".to_owned(), hub.bootstrap_addr()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start_node(root, name, false, &args)
    }

    /// This node's address for `--bootstrap`.
    pub fn bootstrap_addr(&self) -> String {
        let status = self.call("node.status", json!({}));
        format!(
            "/ip4/127.0.0.1/tcp/{}/p2p/{}",
            self.port,
            status["peer_id"].as_str().unwrap()
        )
    }

    pub fn start_node(root: &std::path::Path, name: &str, publish: bool, extra: &[&str]) -> Daemon {
        let mut d = Daemon {
            publish,
            name: name.to_owned(),
            data_dir: root.join(name),
            socket: root.join(format!("{name}.sock")),
            port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log: None,
            child: None,
        };
        d.restart();
        d
    }

    /// As [`Daemon::start_node`], its log (filtered by `filter`) appended to `<name>.log`
    /// under `root`.
    pub fn start_logged(
        root: &std::path::Path,
        name: &str,
        extra: &[&str],
        filter: &str,
    ) -> Daemon {
        let mut d = Daemon {
            publish: false,
            name: name.to_owned(),
            data_dir: root.join(name),
            socket: root.join(format!("{name}.sock")),
            port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log: Some((root.join(format!("{name}.log")), filter.to_owned())),
            child: None,
        };
        d.restart();
        d
    }

    /// What the node logged so far (with [`Daemon::start_logged`]).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|(path, _)| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sottod"));
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--listen")
            .arg(format!("/ip4/127.0.0.1/tcp/{}", self.port))
            .args(self.publish.then_some("--publish-address"))
            .args(["--stamp-difficulty", "8"])
            // A test may ask for another interval.
            .args(
                (!self.extra.iter().any(|a| a == "--fetch-interval-secs"))
                    .then_some(["--fetch-interval-secs", "1"])
                    .into_iter()
                    .flatten(),
            )
            .args(&self.extra)
            .env(
                "SOTTO_LOG",
                std::env::var("SOTTO_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("SOTTO_CONFIG")
            .env("XDG_CONFIG_HOME", self.data_dir.with_extension("config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some((path, filter)) = &self.log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            cmd.env("SOTTO_LOG", filter).stderr(file);
        } else if let Some(dir) = std::env::var_os("SOTTO_TEST_LOG_DIR") {
            // Every node's log in its own file, named after the test's root and the node,
            // to read after a failure.
            let root = self.data_dir.parent().and_then(|p| p.file_name());
            let name = format!("{}-{}.log", root.unwrap().to_string_lossy(), self.name);
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(PathBuf::from(dir).join(name))
                .unwrap();
            cmd.stderr(file);
        }
        cmd
    }

    /// Start the process again with the same data dir, socket and port, and wait until its
    /// control socket answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        self.child = Some(self.command().spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                if let Ok(v) = self.try_call("node.status", json!({})) {
                    if v["listen_addrs"].as_array().is_some_and(|a| !a.is_empty()) {
                        return;
                    }
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited during start: {status}", self.name);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not start within 20 s",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("not running");
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{} did not stop within 15 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory of the process, in KiB (VmRSS), while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib_of(self.pid()?)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Send one raw line and read one line back.
    pub fn raw(&self, line: &[u8]) -> Value {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(line).unwrap();
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("bad reply {reply:?}: {e}"))
    }

    /// Call a method; the result, or the error object.
    pub fn try_call(&self, method: &str, params: Value) -> Result<Value, Value> {
        let line = format!(
            "{}\n",
            json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        );
        let mut reply = self.raw(line.as_bytes());
        match reply.get_mut("result") {
            Some(r) => Ok(r.take()),
            None => Err(reply["error"].take()),
        }
    }

    pub fn call(&self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .unwrap_or_else(|e| panic!("{} {method}: {e}", self.name))
    }

    pub fn init(&self) -> Value {
        let mut name = self.name.clone();
        name[..1].make_ascii_uppercase();
        self.call("account.create", json!({ "name": name }))
    }

    pub fn card(&self) -> String {
        self.call("account.get", json!({}))["card"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn add(&self, other: &Daemon) {
        self.call(
            "contact.add",
            json!({ "card": other.card(), "name": other.name }),
        );
    }

    pub fn send(&self, to: &str, text: &str) -> Value {
        self.call("message.send", json!({ "to": to, "text": text }))
    }

    pub fn outbox(&self) -> u64 {
        self.call("node.status", json!({}))["outbox"]
            .as_u64()
            .unwrap()
    }

    /// Every byte of the node's store files, as they are on disk.
    pub fn raw_store(&self) -> Vec<u8> {
        fn walk(dir: &std::path::Path, out: &mut Vec<u8>) {
            // sled creates and removes files as it works: skip what vanished.
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.extend(std::fs::read(&path).unwrap_or_default());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.data_dir.join("store"), &mut out);
        out
    }

    pub fn messages(&self, with: &str) -> Vec<Value> {
        self.call("message.list", json!({ "contact": with }))
            .as_array()
            .unwrap()
            .clone()
    }

    /// Wait until the conversation with `with` holds a message with `text` in state `state`.
    pub fn wait_for(&self, with: &str, text: &str, state: &str) -> Value {
        wait_until(
            Duration::from_secs(30),
            &format!("{}: {text:?} {state} from/to {with}", self.name),
            || {
                // The contact may not exist yet (a stranger's first message creates it).
                let list = self
                    .try_call("message.list", json!({ "contact": with }))
                    .ok()?;
                list.as_array()?
                    .iter()
                    .find(|m| m["text"] == text && m["state"] == state)
                    .cloned()
            },
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Resident memory of the process `pid`, in KiB (VmRSS).
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Two daemons that know each other.
pub fn pair(root: &std::path::Path) -> (Daemon, Daemon) {
    let alice = Daemon::start(root, "alice");
    let bob = Daemon::start(root, "bob");
    alice.init();
    bob.init();
    alice.add(&bob);
    bob.add(&alice);
    // Each node tells the other its presence (inbox secret, address) once; let that settle.
    for d in [&alice, &bob] {
        wait_until(Duration::from_secs(30), "the presence exchange", || {
            (d.call("node.status", json!({}))["outbox"] == 0).then_some(())
        });
    }
    (alice, bob)
}

/// Poll `f` every 50 ms until it gives a value, or fail after `limit`.
pub fn wait_until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run a command that should exit by itself; kill it after 15 s. Returns whether it
/// succeeded (a killed one did not) and its stderr.
pub fn run_briefly(cmd: &mut Command) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    match status {
        Some(s) => (s.success(), err),
        None => (
            false,
            format!("still running after 15 s (killed); stderr: {err}"),
        ),
    }
}
