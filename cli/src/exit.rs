//! Exit codes that scripts can use, and how a failure is reported.
//!
//! A failure prints one line, `sotto: <message>`, on stderr. With `--json` it also prints
//! `{"error":{"code":..,"message":..}}` on stdout (and nothing else there); `code` is the
//! daemon's JSON-RPC error code, or `null` for a failure on this side of the socket.

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;

use serde_json::{json, Value};

use crate::input::InvalidInput;
use crate::output;
use crate::rpc;

/// The exit-status table, printed at the end of `sotto --help`.
pub const HELP: &str = "\
Exit status:
  0  success
  1  any other error (daemon internal error, I/O, unexpected answer)
  2  usage error (bad arguments)
  3  the daemon is not running, or its socket cannot be connected to
  4  no account yet (create one with: sotto init --name NAME)
  5  unknown contact or group
  6  invalid input (bad card, invalid parameters, own card)
  7  conflict (an account exists already, the contact or group name is taken)
  8  not allowed (not an admin of the group, not a member)";

/// How `sotto` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Success = 0,
    Failure = 1,
    Usage = 2,
    NotRunning = 3,
    NoAccount = 4,
    UnknownContact = 5,
    InvalidInput = 6,
    Conflict = 7,
    NotAllowed = 8,
}

impl Code {
    /// The exit code for a JSON-RPC error code from the daemon (docs/api.md, "Errors").
    pub fn for_daemon_error(code: i64) -> Code {
        match code {
            -32001 => Code::NoAccount,
            -32003 | -32010 => Code::UnknownContact,
            -32011 | -32012 => Code::NotAllowed,
            -32004 | -32602 | -32006 => Code::InvalidInput,
            -32002 | -32005 => Code::Conflict,
            _ => Code::Failure,
        }
    }
}

impl From<Code> for ExitCode {
    fn from(code: Code) -> ExitCode {
        ExitCode::from(code as u8)
    }
}

/// Stdout was closed by its reader (`sotto messages | head`): end quietly and successfully.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// What a failure means for the user: exit code, JSON-RPC code if any, one-line message.
#[derive(Debug, PartialEq)]
pub struct Report {
    pub code: Code,
    pub rpc_code: Option<i64>,
    pub message: String,
    pub data: Option<Value>,
}

/// Classify a failure.
pub fn classify(err: &anyhow::Error) -> Report {
    if let Some(daemon) = err.downcast_ref::<rpc::DaemonError>() {
        return Report {
            code: Code::for_daemon_error(daemon.code),
            rpc_code: Some(daemon.code),
            message: output::one_line(&daemon.message),
            data: daemon.data.clone(),
        };
    }
    let code = if err.downcast_ref::<rpc::ConnectError>().is_some() {
        Code::NotRunning
    } else if err.downcast_ref::<InvalidInput>().is_some() {
        Code::InvalidInput
    } else {
        Code::Failure
    };
    Report {
        code,
        rpc_code: None,
        message: output::one_line(&format!("{err:#}")),
        data: None,
    }
}

/// Print a failure as described in the module documentation and return the exit code.
pub fn report(err: &anyhow::Error, json: bool) -> ExitCode {
    if err.downcast_ref::<StdoutClosed>().is_some() {
        return Code::Success.into();
    }
    let report = classify(err);
    // Nothing sensible is left to do if stderr or stdout cannot be written to.
    let _ = writeln!(io::stderr(), "sotto: {}", report.message);
    if json {
        let mut error = json!({"code": report.rpc_code, "message": report.message});
        if let (Some(data), Some(object)) = (report.data, error.as_object_mut()) {
            object.insert("data".to_owned(), data);
        }
        let mut stdout = io::stdout().lock();
        let _ = writeln!(stdout, "{}", json!({ "error": error }));
        let _ = stdout.flush();
    }
    report.code.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_codes_map_to_exit_codes() {
        let cases = [
            (-32001, Code::NoAccount),
            (-32002, Code::Conflict),
            (-32003, Code::UnknownContact),
            (-32004, Code::InvalidInput),
            (-32005, Code::Conflict),
            (-32006, Code::InvalidInput),
            (-32602, Code::InvalidInput),
            (-32603, Code::Failure),
            (-32601, Code::Failure),
            (-32700, Code::Failure),
            (-32600, Code::Failure),
            (42, Code::Failure),
        ];
        for (rpc_code, exit) in cases {
            assert_eq!(Code::for_daemon_error(rpc_code), exit, "code {rpc_code}");
        }
    }

    #[test]
    fn daemon_error_keeps_the_daemon_message_on_one_line() {
        let err = anyhow::Error::new(rpc::DaemonError {
            code: -32003,
            message: "no contact named bob\nreally".to_owned(),
            data: None,
        });
        let report = classify(&err);
        assert_eq!(report.code, Code::UnknownContact);
        assert_eq!(report.rpc_code, Some(-32003));
        assert_eq!(report.message, "no contact named bob\\nreally");
    }

    #[test]
    fn local_failures() {
        let invalid = anyhow::Error::new(InvalidInput("too big".to_owned()));
        assert_eq!(classify(&invalid).code, Code::InvalidInput);
        let other = anyhow::anyhow!("disk on fire").context("reading the card");
        let report = classify(&other);
        assert_eq!(report.code, Code::Failure);
        assert_eq!(report.rpc_code, None);
        assert_eq!(report.message, "reading the card: disk on fire");
    }
}
