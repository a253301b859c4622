//! One function per `sotto` command: call the daemon, print its answer.
//!
//! With `--json` the daemon's result is printed as it came, as one line of JSON; without,
//! it is read into the types of [`crate::api`] and shown by [`crate::output`].

use std::io::{self, Read, Write};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};

use crate::api::{self, Account, Contact, Event, Group, GroupInfo, Message, Status, Verification};
use crate::events::{Follow, Step};
use crate::exit::StdoutClosed;
use crate::input::InvalidInput;
use crate::output;
use crate::rpc::Client;

/// The most bytes read from standard input for a card or a message.
const MAX_STDIN: u64 = 1024 * 1024;

/// What every command needs: where the daemon is and how to print.
pub struct Context {
    pub socket: PathBuf,
    pub json: bool,
}

impl Context {
    fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.socket)?)
    }

    /// Call `method` on a new connection and print the result: as JSON, or as `human`
    /// makes of it.
    fn call_and_print<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
        human: impl FnOnce(T) -> anyhow::Result<String>,
    ) -> anyhow::Result<()> {
        let result = self.connect()?.call(method, params)?;
        if self.json {
            print_line(&result.to_string())
        } else {
            print_line(&human(api::parse(&result, method)?)?)
        }
    }
}

/// `sotto init --name NAME`
pub fn init(ctx: &Context, name: &str) -> anyhow::Result<()> {
    ctx.call_and_print(
        "account.create",
        json!({ "name": name }),
        |account: Account| Ok(output::account(&account, true)),
    )
}

/// `sotto id [--qr]`
pub fn id(ctx: &Context, qr: bool) -> anyhow::Result<()> {
    ctx.call_and_print("account.get", json!({}), |account: Account| {
        let text = output::account(&account, false);
        if !qr {
            return Ok(text);
        }
        Ok(format!("{text}\n\n{}", output::qr(&account.card)?))
    })
}

/// `sotto status`
pub fn status(ctx: &Context) -> anyhow::Result<()> {
    ctx.call_and_print("node.status", json!({}), |status: Status| {
        Ok(output::status(&status))
    })
}

/// `sotto contact add CARD [--name NAME]`; CARD `-` reads the card from standard input.
pub fn contact_add(ctx: &Context, card: &str, name: Option<&str>) -> anyhow::Result<()> {
    let card = match card {
        "-" => read_stdin("card")?.trim().to_owned(),
        card => card.trim().to_owned(),
    };
    let mut params = json!({ "card": card });
    if let (Some(name), Some(object)) = (name, params.as_object_mut()) {
        object.insert("name".to_owned(), json!(name));
    }
    ctx.call_and_print("contact.add", params, |contact: Contact| {
        Ok(output::contact_added(&contact))
    })
}

/// `sotto contact list`
pub fn contact_list(ctx: &Context) -> anyhow::Result<()> {
    ctx.call_and_print("contact.list", json!({}), |contacts: Vec<Contact>| {
        Ok(output::contacts(&contacts))
    })
}

/// `sotto contact verify NAME`
pub fn contact_verify(ctx: &Context, name: &str) -> anyhow::Result<()> {
    ctx.call_and_print(
        "contact.verify",
        json!({ "contact": name }),
        |v: Verification| Ok(output::verification(&v)),
    )
}

/// `sotto contact block NAME` and `sotto contact unblock NAME`
pub fn contact_block(ctx: &Context, name: &str, block: bool) -> anyhow::Result<()> {
    let method = if block {
        "contact.block"
    } else {
        "contact.unblock"
    };
    ctx.call_and_print(method, json!({ "contact": name }), |v: Value| {
        let who = output::one_line(v["contact"].as_str().unwrap_or(name));
        Ok(if block {
            format!("Blocked {who}: their messages are dropped from now on, and they are not told.")
        } else {
            format!("Unblocked {who}: their messages arrive again.")
        })
    })
}

/// `sotto paths`
pub fn paths(ctx: &Context) -> anyhow::Result<()> {
    ctx.call_and_print("paths.status", json!({}), |p: Value| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let n = |k: &str| p[k].as_u64().unwrap_or(0);
        let mut lines = vec![
            format!(
                "Private paths: {}. Relaying for others: {}. Relays known: {}.",
                if p["private"].as_bool().unwrap_or(false) {
                    "on (mailbox work goes through guard, middle and exit relays)"
                } else {
                    "off (mailbox work goes from this node's own PeerId)"
                },
                if p["relay"].as_bool().unwrap_or(false) { "yes" } else { "no" },
                n("relays_known"),
            ),
            format!(
                "Requests through paths: {} sent, {} answered; {} paths failed, {} shorter than three relays; {} cells sent.",
                n("requests"),
                n("answered"),
                n("path_failures"),
                n("short_paths"),
                n("cells_sent"),
            ),
            format!(
                "As a relay: {} cells passed on, {} answered as exit, {} refused.",
                n("relayed"),
                n("exited"),
                n("refused"),
            ),
        ];
        let guards = p["guards"].as_array().cloned().unwrap_or_default();
        if guards.is_empty() {
            lines.push("No guard relay chosen yet.".to_owned());
        } else {
            lines.push("Guard relays, in the order they are used:".to_owned());
            for g in guards {
                let age_days = now.saturating_sub(g["added_ms"].as_u64().unwrap_or(now)) / 86_400_000;
                let state = match (g["resting_until_ms"].as_u64(), g["failing_since_ms"].as_u64()) {
                    (Some(until), _) => format!(
                        "resting {} s after {} failures in a row",
                        until.saturating_sub(now).div_ceil(1000),
                        g["failures_in_a_row"].as_u64().unwrap_or(0)
                    ),
                    (None, Some(_)) => "failing".to_owned(),
                    (None, None) => "working".to_owned(),
                };
                lines.push(format!(
                    "  {}  {} days old  {}  {} paths this run",
                    output::one_line(g["peer"].as_str().unwrap_or("?")),
                    age_days,
                    state,
                    g["used"].as_u64().unwrap_or(0),
                ));
            }
        }
        Ok(lines.join("\n"))
    })
}

/// `sotto peers bans`
pub fn peers_bans(ctx: &Context) -> anyhow::Result<()> {
    ctx.call_and_print("peers.bans", json!({}), |bans: Vec<Value>| {
        if bans.is_empty() {
            return Ok("No peer is banned.".to_owned());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let lines: Vec<String> = bans
            .iter()
            .map(|b| {
                let left = b["until_ms"].as_u64().unwrap_or(0).saturating_sub(now) / 1000;
                format!(
                    "{}  {} min left  {}",
                    output::one_line(b["peer"].as_str().unwrap_or("?")),
                    left.div_ceil(60),
                    output::one_line(b["reason"].as_str().unwrap_or("")),
                )
            })
            .collect();
        Ok(lines.join("\n"))
    })
}

/// `sotto peers unban PEERID`
pub fn peers_unban(ctx: &Context, peer: &str) -> anyhow::Result<()> {
    ctx.call_and_print("peers.unban", json!({ "peer": peer }), |_: Value| {
        Ok(format!("Lifted the ban on {}.", output::one_line(peer)))
    })
}

/// `sotto requests list`
pub fn requests_list(ctx: &Context) -> anyhow::Result<()> {
    ctx.call_and_print("requests.list", json!({}), |contacts: Vec<Contact>| {
        Ok(if contacts.is_empty() {
            "No message requests.".to_owned()
        } else {
            output::contacts(&contacts)
        })
    })
}

/// `sotto requests accept NAME`
pub fn requests_accept(ctx: &Context, name: &str) -> anyhow::Result<()> {
    ctx.call_and_print(
        "requests.accept",
        json!({ "contact": name }),
        |contact: Contact| {
            Ok(format!(
                "Accepted {}: they are a contact now, and can reach you.",
                output::one_line(&contact.name)
            ))
        },
    )
}

/// `sotto requests reject NAME`
pub fn requests_reject(ctx: &Context, name: &str) -> anyhow::Result<()> {
    ctx.call_and_print("requests.reject", json!({ "contact": name }), |v: Value| {
        Ok(format!(
            "Rejected {}; {} of their messages removed.",
            output::one_line(v["contact"].as_str().unwrap_or(name)),
            v["messages_removed"].as_u64().unwrap_or(0)
        ))
    })
}

/// `sotto mailbox stats`
pub fn mailbox_stats(ctx: &Context) -> anyhow::Result<()> {
    ctx.call_and_print("mailbox.stats", json!({}), |v: Value| {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Ok(format!(
            "Hosting for others: {} envelopes ({} bytes) in {} dead drops\n\
             Deposits taken: {}; refused: {}\n\
             Deleted by their recipients: {}; expired: {}; handed over to closer hosts: {}",
            n("envelopes"),
            n("bytes"),
            n("dead_drops"),
            n("deposits"),
            n("rejections"),
            n("deleted"),
            n("expired"),
            n("handed_over"),
        ))
    })
}

/// `sotto send NAME TEXT`; TEXT `-` reads the message from standard input (without its
/// final line break).
pub fn send(ctx: &Context, to: &str, text: &str) -> anyhow::Result<()> {
    let text = match text {
        "-" => read_stdin("message")?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
        text => text.to_owned(),
    };
    ctx.call_and_print(
        "message.send",
        json!({ "to": to, "text": text }),
        |m: Message| Ok(output::sent(&m)),
    )
}

/// `sotto send NAME [CAPTION] --file|--voice|--sticker|--gif PATH`: the daemon reads the
/// file (its absolute path is sent), seals it and offers it to the contact.
pub fn send_file(
    ctx: &Context,
    to: &str,
    path: &std::path::Path,
    kind: &str,
    caption: &str,
) -> anyhow::Result<()> {
    let path = std::path::absolute(path)
        .with_context(|| format!("cannot resolve the path {}", path.display()))?;
    let caption = match caption {
        "-" => read_stdin("caption")?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
        text => text.to_owned(),
    };
    ctx.call_and_print(
        "message.send",
        json!({ "to": to, "text": caption, "file": path, "kind": kind }),
        |m: Message| Ok(output::sent(&m)),
    )
}

/// How long `sotto attachment get` waits without any progress before it leaves the
/// download to the daemon.
const STALL: std::time::Duration = std::time::Duration::from_secs(120);

/// `sotto attachment get MSGID [--out PATH]`: ask for the file, show progress on a
/// terminal until it is complete, then save a copy at PATH if asked.
pub fn attachment_get(
    ctx: &Context,
    id: &str,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let out = out
        .map(std::path::absolute)
        .transpose()
        .context("cannot resolve the output path")?;
    let mut client = ctx.connect()?;
    let show = !ctx.json && io::stderr().is_terminal();
    let mut last = (0u64, std::time::Instant::now());
    loop {
        let value = client.call("attachment.get", json!({ "id": id }))?;
        let a: api::Attachment = api::parse(&value, "attachment.get")?;
        match a.state.as_str() {
            "complete" => break,
            "failed" => bail!(
                "the download of {} failed: {}",
                output::one_line(&a.name),
                output::one_line(a.error.as_deref().unwrap_or("no reason given"))
            ),
            _ => {}
        }
        if show {
            eprint!("\r\x1b[K{}", output::progress(&a));
        }
        if a.received > last.0 {
            last = (a.received, std::time::Instant::now());
        } else if last.1.elapsed() > STALL {
            if show {
                eprintln!();
            }
            bail!(
                "the download of {} made no progress for {} s ({}); the daemon goes on \
                 trying: run this again later",
                output::one_line(&a.name),
                STALL.as_secs(),
                output::one_line(a.error.as_deref().unwrap_or("waiting"))
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    if show {
        eprint!("\r\x1b[K");
    }
    let value = client.call("attachment.get", json!({ "id": id, "out": out }))?;
    if ctx.json {
        return print_line(&value.to_string());
    }
    let a: api::Attachment = api::parse(&value, "attachment.get")?;
    print_line(&output::saved(&a, out.as_deref()))
}

/// `sotto reply NAME MSGID TEXT`
pub fn reply(ctx: &Context, to: &str, id: &str, text: &str) -> anyhow::Result<()> {
    ctx.call_and_print(
        "message.send",
        json!({ "to": to, "text": text, "reply_to": id }),
        |m: Message| Ok(output::sent(&m)),
    )
}

/// `sotto react NAME MSGID EMOJI` (an empty EMOJI takes the reaction back)
pub fn react(ctx: &Context, chat: &str, id: &str, emoji: &str) -> anyhow::Result<()> {
    ctx.call_and_print(
        "message.react",
        json!({ "chat": chat, "id": id, "emoji": emoji }),
        |m: Message| Ok(output::message(&m)),
    )
}

/// `sotto edit NAME MSGID TEXT`
pub fn edit(ctx: &Context, chat: &str, id: &str, text: &str) -> anyhow::Result<()> {
    ctx.call_and_print(
        "message.edit",
        json!({ "chat": chat, "id": id, "text": text }),
        |m: Message| Ok(output::message(&m)),
    )
}

/// `sotto delete NAME MSGID [--for-everyone]`
pub fn delete(ctx: &Context, chat: &str, id: &str, for_everyone: bool) -> anyhow::Result<()> {
    ctx.call_and_print(
        "message.delete",
        json!({ "chat": chat, "id": id, "for_everyone": for_everyone }),
        |m: Message| {
            Ok(if for_everyone {
                format!("Deleted #{} for everyone.", output::short_id(&m.id))
            } else {
                format!("Deleted #{} here.", output::short_id(&m.id))
            })
        },
    )
}

/// `sotto read NAME`
pub fn read(ctx: &Context, chat: &str) -> anyhow::Result<()> {
    ctx.call_and_print("chat.read", json!({ "chat": chat }), |r: api::Read| {
        Ok(format!(
            "Marked {} message(s) read in {}{}.",
            r.marked,
            output::one_line(&r.chat),
            if r.receipt_sent {
                " (read receipt sent)"
            } else {
                ""
            }
        ))
    })
}

/// `sotto disappearing NAME 24h|7d|90d|off`
pub fn disappearing(ctx: &Context, chat: &str, timer: &str) -> anyhow::Result<()> {
    let seconds = match timer {
        "off" => None,
        "24h" | "1d" => Some(86_400),
        "7d" => Some(7 * 86_400),
        "90d" => Some(90 * 86_400),
        other => {
            return Err(InvalidInput(format!(
                "a disappearing timer is 24h, 7d, 90d or off, not {other:?}"
            ))
            .into())
        }
    };
    ctx.call_and_print(
        "chat.disappearing",
        json!({ "chat": chat, "seconds": seconds }),
        |t: api::Timer| {
            Ok(match t.seconds {
                Some(s) => format!(
                    "Messages in {} now disappear {} day(s) after they are sent.",
                    output::one_line(&t.chat),
                    s / 86_400
                ),
                None => format!(
                    "Messages in {} no longer disappear.",
                    output::one_line(&t.chat)
                ),
            })
        },
    )
}

/// `sotto messages [NAME] [--limit N]`
pub fn messages(ctx: &Context, contact: Option<&str>, limit: Option<u32>) -> anyhow::Result<()> {
    let mut params = serde_json::Map::new();
    if let Some(contact) = contact {
        params.insert("contact".to_owned(), json!(contact));
    }
    if let Some(limit) = limit {
        params.insert("limit".to_owned(), json!(limit));
    }
    ctx.call_and_print(
        "message.list",
        Value::Object(params),
        |list: Vec<Message>| Ok(output::messages(&list, contact)),
    )
}

/// `sotto watch [--since CURSOR]`: print events until the daemon closes the connection.
pub fn watch(ctx: &Context, since: Option<u64>) -> anyhow::Result<()> {
    let mut client = ctx.connect()?;
    let mut follow = Follow::new(since);
    let answer = client.call("events.subscribe", follow.subscribe_params())?;
    follow.subscribed(&answer);
    loop {
        let Some(notification) = client.next_notification()? else {
            match follow.resume_cursor() {
                Some(cursor) => bail!(
                    "the daemon closed the connection; carry on with: sotto watch --since {cursor}"
                ),
                None => bail!("the daemon closed the connection"),
            }
        };
        match follow.handle(&notification) {
            Step::Show(params) if ctx.json => print_line(&params.to_string())?,
            Step::Show(params) => match api::parse::<Event>(params, "event") {
                Ok(event) => {
                    if let Some(line) = output::event(&event) {
                        print_line(&line)?;
                    }
                }
                Err(e) => warn(&format!("{e:#}")),
            },
            Step::Resubscribe { since } => {
                let from = since.map_or_else(|| "now".to_owned(), |c| format!("cursor {c}"));
                warn(&format!(
                    "events came faster than they were read; catching up from {from}"
                ));
                let answer = client.call("events.subscribe", follow.subscribe_params())?;
                follow.subscribed(&answer);
            }
            Step::Malformed => warn("ignoring an event without a cursor"),
            Step::Skip => {}
        }
    }
}

/// `sotto completions SHELL`: needs no daemon.
pub fn completions(shell: clap_complete::Shell, mut command: clap::Command) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "sotto", &mut script);
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(&script)
        .and_then(|()| stdout.flush())
        .map_err(stdout_error)
}

/// Print `text` and a line break, and flush (so that `watch` output reaches pipes at once).
fn print_line(text: &str) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .map_err(stdout_error)
}

fn stdout_error(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow!(e).context("cannot write to standard output")
    }
}

/// A warning on stderr; it does not change the exit code.
fn warn(message: &str) {
    let _ = writeln!(
        io::stderr(),
        "sotto: warning: {}",
        output::one_line(message)
    );
}

/// Standard input as text, at most [`MAX_STDIN`] bytes.
fn read_stdin(what: &str) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    io::stdin()
        .lock()
        .take(MAX_STDIN + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read the {what} from standard input"))?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_STDIN {
        return Err(InvalidInput(format!(
            "the {what} on standard input is longer than {MAX_STDIN} bytes"
        ))
        .into());
    }
    String::from_utf8(bytes)
        .map_err(|_| InvalidInput(format!("the {what} on standard input is not UTF-8 text")).into())
}

/// What a `sotto group` command does.
#[derive(Debug)]
pub enum GroupAction {
    Create { name: String, members: Vec<String> },
    Add { group: String, members: Vec<String> },
    Remove { group: String, member: String },
    Leave { group: String },
    Rename { group: String, name: String },
    Describe { group: String, text: String },
    Admin { group: String, member: String },
    Join { group: String },
    Decline { group: String },
    List,
    Info { group: String },
}

/// `sotto group …`
pub fn group(ctx: &Context, action: GroupAction) -> anyhow::Result<()> {
    let (method, params, done) = match action {
        GroupAction::List => return group_list(ctx),
        GroupAction::Info { group } => return group_info(ctx, &group),
        GroupAction::Create { name, members } => (
            "group.create",
            json!({ "name": name, "members": members }),
            "Created",
        ),
        GroupAction::Add { group, members } => (
            "group.add",
            json!({ "group": group, "members": members }),
            "Added to",
        ),
        GroupAction::Remove { group, member } => (
            "group.remove",
            json!({ "group": group, "member": member }),
            "Removed from",
        ),
        GroupAction::Leave { group } => ("group.leave", json!({ "group": group }), "Left"),
        GroupAction::Rename { group, name } => (
            "group.rename",
            json!({ "group": group, "name": name }),
            "Renamed",
        ),
        GroupAction::Describe { group, text } => (
            "group.describe",
            json!({ "group": group, "text": text }),
            "Described",
        ),
        GroupAction::Admin { group, member } => (
            "group.admin",
            json!({ "group": group, "member": member }),
            "New admin in",
        ),
        GroupAction::Join { group } => ("group.join", json!({ "group": group }), "Joined"),
        GroupAction::Decline { group } => ("group.decline", json!({ "group": group }), "Declined"),
    };
    ctx.call_and_print(method, params, |g: Group| {
        Ok(format!("{done}: {}", output::group_line(&g)))
    })
}

/// `sotto group list`
fn group_list(ctx: &Context) -> anyhow::Result<()> {
    ctx.call_and_print("group.list", json!({}), |groups: Vec<Group>| {
        Ok(output::groups(&groups))
    })
}

/// `sotto group info GROUP`
fn group_info(ctx: &Context, group: &str) -> anyhow::Result<()> {
    ctx.call_and_print(
        "group.info",
        json!({ "group": group }),
        |info: GroupInfo| Ok(output::group_info(&info)),
    )
}
