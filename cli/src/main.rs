//! `sotto`: the command-line client of the sotto daemon.
//!
//! It speaks only the daemon's control API (`docs/api.md`): one JSON-RPC 2.0 request per
//! line over the Unix socket given by `--socket`, `SOTTO_SOCKET`, or the default
//! `$XDG_RUNTIME_DIR/sotto/sottod.sock` (`/tmp/sotto-$UID/sottod.sock` without
//! `XDG_RUNTIME_DIR`). It never opens the store or the network itself.
//!
//! ```text
//! $ sotto init --name Alice
//! $ sotto contact add 'sotto:…' --name bob
//! $ sotto contact verify bob
//! $ sotto send bob 'hello'
//! $ sotto watch --json | my-bot
//! ```
//!
//! Every command takes `--json`, which prints the daemon's answer as one line of JSON (and
//! `{"error":{"code":..,"message":..}}` on failure).
//!
//! # Exit status
//!
//! | code | meaning |
//! | ---: | --- |
//! | 0 | success |
//! | 1 | any other error (daemon internal error, I/O, unexpected answer) |
//! | 2 | usage error (bad arguments) |
//! | 3 | the daemon is not running, or its socket cannot be connected to |
//! | 4 | no account yet (`-32001`) |
//! | 5 | unknown contact (`-32003`) |
//! | 6 | invalid input: bad card (`-32004`), invalid params (`-32602`), own card (`-32006`) |
//! | 7 | conflict: account exists (`-32002`), contact name taken (`-32005`) |

mod api;
mod commands;
mod events;
mod exit;
mod input;
mod output;
mod paths;
mod rpc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::commands::Context;

/// Talk to the sotto daemon: your account, contacts and messages.
#[derive(Debug, Parser)]
#[command(name = "sotto", version, after_help = exit::HELP)]
struct Cli {
    /// The daemon's control socket [default: $XDG_RUNTIME_DIR/sotto/sottod.sock, or
    /// /tmp/sotto-$UID/sottod.sock]
    #[arg(long, global = true, env = "SOTTO_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Print the daemon's answer as JSON (one value per line) instead of text
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create your account
    Init {
        /// Your display name, as printed in your card
        #[arg(long)]
        name: String,
    },
    /// Show your card, address and fingerprint
    Id {
        /// Also draw the card as a QR code (not with --json)
        #[arg(long)]
        qr: bool,
    },
    /// Show the node: PeerId, addresses, connected peers, outbox
    Status,
    /// Add, list and verify contacts
    #[command(subcommand)]
    Contact(ContactCommand),
    /// Send a message
    #[command(
        after_help = "A message starting with '-' goes after '--': sotto send bob -- '-5 degrees'"
    )]
    Send {
        /// The contact's name or address
        name: String,
        /// The message (with a file: its caption); `-` reads it from standard input
        #[arg(required_unless_present_any = ["file", "voice", "sticker", "gif"])]
        text: Option<String>,
        /// Send this file (up to 100 MiB by default); TEXT is its caption
        #[arg(long, value_name = "PATH", group = "attachment")]
        file: Option<PathBuf>,
        /// Send this audio file as a voice note
        #[arg(long, value_name = "PATH", group = "attachment")]
        voice: Option<PathBuf>,
        /// Send this webp or png image as a sticker
        #[arg(long, value_name = "PATH", group = "attachment")]
        sticker: Option<PathBuf>,
        /// Send this animation, to be played looped
        #[arg(long, value_name = "PATH", group = "attachment")]
        gif: Option<PathBuf>,
        /// The file's caption (instead of TEXT)
        #[arg(long, conflicts_with = "text", requires = "attachment")]
        caption: Option<String>,
    },
    /// Attachments of messages: download one, save it elsewhere
    #[command(subcommand)]
    Attachment(AttachmentCommand),
    /// Reply to a message (MSGID: its id from `sotto messages`, or 4+ of its first digits)
    Reply {
        /// The contact's or group's name
        name: String,
        msgid: String,
        text: String,
    },
    /// React to a message with one emoji; an empty EMOJI ('') takes your reaction back
    React {
        name: String,
        msgid: String,
        emoji: String,
    },
    /// Change the text of a message of yours (within 15 minutes of sending it)
    Edit {
        name: String,
        msgid: String,
        text: String,
    },
    /// Delete a message here, or one of yours for everyone (within 48 hours)
    Delete {
        name: String,
        msgid: String,
        #[arg(long)]
        for_everyone: bool,
    },
    /// Mark a conversation read (and tell the contact, unless read receipts are off)
    Read { name: String },
    /// Make new messages in a conversation disappear for both sides: 24h, 7d, 90d or off
    Disappearing { name: String, timer: String },
    /// Show messages, oldest first
    Messages {
        /// Only the conversation with this contact (name or address)
        name: Option<String>,
        /// Only the newest N messages
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// Print incoming messages and delivery notices as they happen
    Watch {
        /// First replay the stored events after this cursor
        #[arg(long, value_name = "CURSOR")]
        since: Option<u64>,
    },
    /// Message requests: people who wrote first, with your card
    #[command(subcommand)]
    Requests(RequestsCommand),
    /// What this node hosts for others
    #[command(subcommand)]
    Mailbox(MailboxCommand),
    /// Peers this node banned for asking too much
    #[command(subcommand)]
    Peers(PeersCommand),
    /// Private paths: guard relays, paths built and failed, cells relayed for others
    Paths,
    /// Group chats: create, manage, join; `sotto send GROUP` and `sotto messages GROUP`
    /// work with a group's name
    #[command(subcommand)]
    Group(GroupCommand),
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum ContactCommand {
    /// Add a contact from their card
    Add {
        /// The contact's card (`sotto:…`); `-` reads it from standard input
        card: String,
        /// The name to know them by [default: their display name]
        #[arg(long)]
        name: Option<String>,
    },
    /// List contacts
    List,
    /// Show the safety number to compare with a contact
    Verify {
        /// The contact's name or address
        name: String,
    },
    /// Drop a contact's messages from now on, without telling them
    Block {
        /// The contact's (or request's) name or address
        name: String,
    },
    /// Take a contact's messages again
    Unblock {
        /// The contact's name or address
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Create a group; you are its admin
    Create {
        /// The group's name (shared with its members; one namespace with your contacts)
        name: String,
        /// A contact to add; repeatable
        #[arg(long = "member", value_name = "CONTACT")]
        members: Vec<String>,
    },
    /// Add contacts to a group (admins only)
    Add {
        group: String,
        #[arg(required = true, value_name = "CONTACT")]
        members: Vec<String>,
    },
    /// Remove a member (admins only); they read nothing sent after
    Remove {
        group: String,
        /// A contact's name, a member's label from `group info`, or an address
        member: String,
    },
    /// Leave a group
    Leave { group: String },
    /// Rename a group (admins only)
    Rename { group: String, name: String },
    /// Set a group's description (admins only)
    Describe { group: String, text: String },
    /// Make a member an admin (admins only)
    Admin { group: String, member: String },
    /// List groups and invitations
    List,
    /// Show a group: members, admins, your role
    Info { group: String },
    /// Accept an invitation
    Join { group: String },
    /// Decline an invitation
    Decline { group: String },
}

#[derive(Debug, Subcommand)]
enum PeersCommand {
    /// List the peers this node banned for flooding it, and until when
    Bans,
    /// Lift a ban
    Unban {
        /// The banned peer's PeerId
        peer: String,
    },
}

#[derive(Debug, Subcommand)]
enum RequestsCommand {
    /// List message requests
    List,
    /// Accept a request: the writer becomes a contact and can reach you
    Accept {
        /// The request's name or address
        name: String,
    },
    /// Reject a request: forget the writer and their messages
    Reject {
        /// The request's name or address
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum AttachmentCommand {
    /// Download a message's file (if it is not yet) and wait for it, with progress
    Get {
        /// The message's id from `sotto messages`, or 4+ of its first digits
        msgid: String,
        /// Also save the finished file here (never over an existing file)
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum MailboxCommand {
    /// Dead drops, envelopes and bytes hosted; deposits, rejections, handovers
    Stats,
}

fn group_action(command: GroupCommand) -> commands::GroupAction {
    use commands::GroupAction as A;
    match command {
        GroupCommand::Create { name, members } => A::Create { name, members },
        GroupCommand::Add { group, members } => A::Add { group, members },
        GroupCommand::Remove { group, member } => A::Remove { group, member },
        GroupCommand::Leave { group } => A::Leave { group },
        GroupCommand::Rename { group, name } => A::Rename { group, name },
        GroupCommand::Describe { group, text } => A::Describe { group, text },
        GroupCommand::Admin { group, member } => A::Admin { group, member },
        GroupCommand::Join { group } => A::Join { group },
        GroupCommand::Decline { group } => A::Decline { group },
        GroupCommand::List => A::List,
        GroupCommand::Info { group } => A::Info { group },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = Context {
        socket: cli.socket.unwrap_or_else(paths::default_socket),
        json: cli.json,
    };
    let result = match cli.command {
        Command::Init { name } => commands::init(&ctx, &name),
        Command::Id { qr } => commands::id(&ctx, qr),
        Command::Status => commands::status(&ctx),
        Command::Contact(ContactCommand::Add { card, name }) => {
            commands::contact_add(&ctx, &card, name.as_deref())
        }
        Command::Contact(ContactCommand::List) => commands::contact_list(&ctx),
        Command::Contact(ContactCommand::Verify { name }) => commands::contact_verify(&ctx, &name),
        Command::Contact(ContactCommand::Block { name }) => {
            commands::contact_block(&ctx, &name, true)
        }
        Command::Contact(ContactCommand::Unblock { name }) => {
            commands::contact_block(&ctx, &name, false)
        }
        Command::Peers(PeersCommand::Bans) => commands::peers_bans(&ctx),
        Command::Peers(PeersCommand::Unban { peer }) => commands::peers_unban(&ctx, &peer),
        Command::Send {
            name,
            text,
            file,
            voice,
            sticker,
            gif,
            caption,
        } => {
            let attachment = file
                .map(|p| (p, "file"))
                .or(voice.map(|p| (p, "voice")))
                .or(sticker.map(|p| (p, "sticker")))
                .or(gif.map(|p| (p, "gif")));
            match attachment {
                Some((path, kind)) => commands::send_file(
                    &ctx,
                    &name,
                    &path,
                    kind,
                    caption.or(text).as_deref().unwrap_or(""),
                ),
                None => commands::send(&ctx, &name, text.as_deref().unwrap_or_default()),
            }
        }
        Command::Attachment(AttachmentCommand::Get { msgid, out }) => {
            commands::attachment_get(&ctx, &msgid, out.as_deref())
        }
        Command::Reply { name, msgid, text } => commands::reply(&ctx, &name, &msgid, &text),
        Command::React { name, msgid, emoji } => commands::react(&ctx, &name, &msgid, &emoji),
        Command::Edit { name, msgid, text } => commands::edit(&ctx, &name, &msgid, &text),
        Command::Delete {
            name,
            msgid,
            for_everyone,
        } => commands::delete(&ctx, &name, &msgid, for_everyone),
        Command::Read { name } => commands::read(&ctx, &name),
        Command::Disappearing { name, timer } => commands::disappearing(&ctx, &name, &timer),
        Command::Messages { name, limit } => commands::messages(&ctx, name.as_deref(), limit),
        Command::Watch { since } => commands::watch(&ctx, since),
        Command::Requests(RequestsCommand::List) => commands::requests_list(&ctx),
        Command::Requests(RequestsCommand::Accept { name }) => {
            commands::requests_accept(&ctx, &name)
        }
        Command::Requests(RequestsCommand::Reject { name }) => {
            commands::requests_reject(&ctx, &name)
        }
        Command::Mailbox(MailboxCommand::Stats) => commands::mailbox_stats(&ctx),
        Command::Paths => commands::paths(&ctx),
        Command::Group(command) => commands::group(&ctx, group_action(command)),
        Command::Completions { shell } => commands::completions(shell, Cli::command()),
    };
    match result {
        Ok(()) => exit::Code::Success.into(),
        Err(err) => exit::report(&err, ctx.json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn json_is_accepted_before_and_after_the_command() {
        for args in [["sotto", "--json", "status"], ["sotto", "status", "--json"]] {
            assert!(Cli::try_parse_from(args).is_ok_and(|cli| cli.json));
        }
    }
}
