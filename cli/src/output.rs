//! Human-readable output: what each command prints without `--json`.
//!
//! Every function returns the text to print (without a final newline) so that it can be
//! tested. Strings that come from the daemon — names, message text, cards — may come from
//! other people; [`one_line`] and [`message_text`] escape control and bidirectional-override
//! characters so that they cannot rewrite the terminal or disguise themselves.
//!
//! Times are shown in UTC as `YYYY-MM-DD HH:MM` ([`time`]).

use std::fmt::Write as _;

use anyhow::Context as _;
use qrcode::render::unicode::Dense1x2;
use qrcode::{EcLevel, QrCode};

use crate::api;
use crate::api::{
    Account, Contact, Direction, Event, Group, GroupInfo, Message, Status, Verification,
};

/// Width of the label column in `key: value` listings.
const LABEL: usize = 14;

/// Indent of continuation lines of a multi-line message: the width of a time and two spaces.
const CONTINUATION: &str = "                             ";

/// `account.create` / `account.get`, with "Account created." first after `sotto init`.
pub fn account(account: &Account, created: bool) -> String {
    let mut lines = Vec::new();
    if created {
        lines.push("Account created.".to_owned());
    }
    lines.push(field("name:", &one_line(&account.name)));
    lines.push(field("address:", &one_line(&account.address)));
    lines.push(field("fingerprint:", &one_line(&account.fingerprint)));
    lines.push(field("card:", &one_line(&account.card)));
    if created {
        lines.push(String::new());
        lines.push("Give your card to the people you want to write to you; show it again with: sotto id --qr".to_owned());
    }
    lines.join("\n")
}

/// The card as a QR code drawn with half blocks, light modules as blocks so that it scans
/// on a terminal with a dark background.
pub fn qr(card: &str) -> anyhow::Result<String> {
    let code = QrCode::with_error_correction_level(card.as_bytes(), EcLevel::M)
        .or_else(|_| QrCode::with_error_correction_level(card.as_bytes(), EcLevel::L))
        .context("the card is too long to show as a QR code; share the card text instead")?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// `node.status`.
pub fn status(status: &Status) -> String {
    let mut lines = vec![field("peer id:", &one_line(&status.peer_id))];
    // Complete addresses, ready for another node's `--bootstrap`.
    let addrs: Vec<String> = status
        .listen_addrs
        .iter()
        .map(|a| format!("{a}/p2p/{}", status.peer_id))
        .collect();
    lines.extend(list("listening on:", &addrs, "none"));
    let peers = match status.connected_peers.len() {
        1 => "1 peer".to_owned(),
        n => format!("{n} peers"),
    };
    lines.push(field("connected:", &peers));
    lines.extend(
        status
            .connected_peers
            .iter()
            .map(|peer| field("", &one_line(peer))),
    );
    let outbox = match status.outbox {
        1 => "1 message waiting for delivery".to_owned(),
        n => format!("{n} messages waiting for delivery"),
    };
    lines.push(field("outbox:", &outbox));
    let account = match &status.account {
        Some(address) => one_line(address),
        None => "none (create one with: sotto init --name NAME)".to_owned(),
    };
    lines.push(field("account:", &account));
    if let Some(version) = &status.version {
        lines.push(field("version:", &one_line(version)));
    }
    lines.join("\n")
}

/// `contact.add`.
pub fn contact_added(contact: &Contact) -> String {
    let name = one_line(&contact.name);
    let display = match &contact.display_name {
        Some(display) if display != &contact.name => format!(" ({})", one_line(display)),
        _ => String::new(),
    };
    format!(
        "Added contact {name}{display}, fingerprint {}.\nCompare safety numbers with: sotto contact verify {name}",
        one_line(&contact.fingerprint)
    )
}

/// `contact.list`: a table of name, fingerprint, address and a `request` marker.
pub fn contacts(contacts: &[Contact]) -> String {
    if contacts.is_empty() {
        return "No contacts yet. Add one with: sotto contact add CARD".to_owned();
    }
    let rows: Vec<[String; 4]> = contacts
        .iter()
        .map(|c| {
            let marker = if c.request { "request" } else { "" };
            [
                one_line(&c.name),
                one_line(&c.fingerprint),
                one_line(&c.address),
                marker.to_owned(),
            ]
        })
        .collect();
    let header = ["NAME", "FINGERPRINT", "ADDRESS", ""].map(str::to_owned);
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(widths) {
                let _ = write!(line, "{cell:<width$}  ");
            }
            line.trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `contact.verify`: the safety number in three rows of four groups, and what to do with it.
pub fn verification(v: &Verification) -> String {
    let name = one_line(&v.contact);
    let rows = safety_rows(&v.safety_number);
    let mut lines = vec![format!("Safety number with {name}:"), String::new()];
    lines.extend(rows.iter().map(|row| format!("    {row}")));
    lines.push(String::new());
    lines.push(format!(
        "Compare it with {name} in person or on a call: {name} runs `sotto contact verify`"
    ));
    lines.push(
        "with your name. Both of you must see the same number. If the numbers differ, someone"
            .to_owned(),
    );
    lines.push(
        "may be intercepting your messages: do not trust this contact until they match.".to_owned(),
    );
    lines.push(String::new());
    let own_label = "your fingerprint:";
    let their_label = format!("{name}'s fingerprint:");
    let width = own_label.chars().count().max(their_label.chars().count()) + 1;
    lines.push(format!(
        "{own_label:<width$}{}",
        one_line(&v.own_fingerprint)
    ));
    lines.push(format!("{their_label:<width$}{}", one_line(&v.fingerprint)));
    lines.join("\n")
}

/// The safety number as rows of four groups: twelve groups of five digits make three rows.
/// A number of another shape is shown by its own whitespace-separated groups.
fn safety_rows(number: &str) -> Vec<String> {
    let digits: Vec<char> = number.chars().filter(char::is_ascii_digit).collect();
    let only_digits = number
        .chars()
        .all(|c| c.is_ascii_digit() || c.is_whitespace());
    let groups: Vec<String> = if only_digits && digits.len() == 60 {
        digits
            .chunks(5)
            .map(|group| group.iter().collect())
            .collect()
    } else {
        number.split_whitespace().map(one_line).collect()
    };
    groups.chunks(4).map(|row| row.join(" ")).collect()
}

/// `message.send`.
pub fn sent(message: &Message) -> String {
    format!(
        "Queued message {} to {}.",
        one_line(&message.id),
        one_line(&message.contact)
    )
}

/// `message.list`, one line per message.
pub fn messages(messages: &[Message], contact: Option<&str>) -> String {
    if messages.is_empty() {
        return match contact {
            Some(name) => format!("No messages with {}.", one_line(name)),
            None => "No messages.".to_owned(),
        };
    }
    messages.iter().map(message).collect::<Vec<_>>().join("\n")
}

/// A message id as lines show it: its first 8 hex digits (commands take any unique prefix
/// of 4 or more).
pub fn short_id(id: &str) -> String {
    one_line(id.get(..8).unwrap_or(id))
}

/// One message: `2026-11-29 10:04  #00112233  me → bob: text  [delivered]` for an outgoing
/// one, `2026-11-29 10:05  #00112233  bob: text` for an incoming one, `… [friends] bob:
/// text` for one in a group; then what happened to it: `↩ #id` before the text for a reply,
/// `(edited)`, `(deleted)`, reactions, `⏱` for one that disappears. The time is when it
/// was sent.
pub fn message(message: &Message) -> String {
    let when = message
        .sent_at
        .or(message.received_at)
        .map_or_else(|| "?".repeat(16), time);
    let id = short_id(&message.id);
    if message.notice {
        return format!(
            "{when}  #{id}  -- {} ({})",
            one_line(&message.text),
            one_line(&message.from)
        );
    }
    let mut text = match &message.reply_to {
        Some(to) => format!("↩ #{} ", short_id(to)),
        None => String::new(),
    };
    if message.deleted {
        text.push_str("(deleted)");
    } else {
        text.push_str(&message_text(&message.text));
    }
    if message.edited_at.is_some() && !message.deleted {
        text.push_str(" (edited)");
    }
    let mut after = String::new();
    if !message.reactions.is_empty() {
        let reactions: Vec<String> = message
            .reactions
            .iter()
            .map(|r| format!("{} {}", one_line(&r.emoji), one_line(&r.from)))
            .collect();
        after.push_str(&format!("  {{{}}}", reactions.join(", ")));
    }
    for a in &message.attachments {
        after.push_str(&format!("  [{}]", attachment(a)));
    }
    if message.expires_at.is_some() {
        after.push_str("  ⏱");
    }
    if let Some(group) = &message.group {
        let state = match message.direction {
            Direction::Out => format!("  [{}]", one_line(&message.state)),
            Direction::In => String::new(),
        };
        return format!(
            "{when}  #{id}  [{}] {}: {text}{state}{after}",
            one_line(group),
            one_line(&message.from)
        );
    }
    match message.direction {
        Direction::Out => format!(
            "{when}  #{id}  me → {}: {text}  [{}]{after}",
            one_line(&message.contact),
            one_line(&message.state)
        ),
        Direction::In => format!("{when}  #{id}  {}: {text}{after}", one_line(&message.from)),
    }
}

/// A byte count as people read it: `812 B`, `3.4 KiB`, `20.0 MiB`.
pub fn bytes(n: u64) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1 << 20 => format!("{:.1} KiB", n as f64 / 1024.0),
        n if n < 1 << 30 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n => format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30)),
    }
}

/// An attachment in a message line: `📎 cat.png, image/png, 1.2 MiB, complete`.
pub fn attachment(a: &api::Attachment) -> String {
    let icon = match a.kind.as_str() {
        "voice" => "🎤",
        "sticker" => "🏷",
        "gif" => "🎞",
        _ => "📎",
    };
    let state = match a.state.as_str() {
        "downloading" if a.size > 0 => {
            format!("downloading {}%", a.received.saturating_mul(100) / a.size)
        }
        s => one_line(s),
    };
    format!(
        "{icon} {}, {}, {}, {state}",
        one_line(&a.name),
        one_line(&a.mime),
        bytes(a.size)
    )
}

/// The progress line of `sotto attachment get`.
pub fn progress(a: &api::Attachment) -> String {
    let pct = a
        .received
        .saturating_mul(100)
        .checked_div(a.size)
        .unwrap_or(100);
    let filled = (pct / 5) as usize;
    let mut line = format!(
        "{} [{}{}] {pct:>3}%  {} of {}",
        one_line(&a.name),
        "#".repeat(filled),
        "-".repeat(20 - filled.min(20)),
        bytes(a.received),
        bytes(a.size)
    );
    if let Some(e) = &a.error {
        line.push_str(&format!("  ({})", one_line(e)));
    }
    line
}

/// `sotto attachment get`, done.
pub fn saved(a: &api::Attachment, out: Option<&std::path::Path>) -> String {
    let at = a.path.as_deref().map(one_line).unwrap_or_default();
    match out {
        Some(out) => format!(
            "{} ({}) is complete: {at}; saved a copy to {}.",
            one_line(&a.name),
            bytes(a.size),
            one_line(&out.display().to_string())
        ),
        None => format!(
            "{} ({}) is complete: {at}",
            one_line(&a.name),
            bytes(a.size)
        ),
    }
}

/// An event from `sotto watch`; `None` for kinds that are not shown.
pub fn event(event: &Event) -> Option<String> {
    match (event.kind.as_str(), &event.message, &event.contact) {
        ("message.received" | "message.delivered", Some(m), _) => Some(message(m)),
        ("message.updated", Some(m), _) => Some(format!("updated: {}", message(m))),
        ("message.read", Some(m), _) => Some(format!("read: {}", message(m))),
        ("contact.added", _, Some(c)) if c.request => Some(format!(
            "New message request from {} (fingerprint {}).",
            one_line(&c.name),
            one_line(&c.fingerprint)
        )),
        ("contact.added", _, Some(c)) => Some(format!(
            "Contact added: {} (fingerprint {}).",
            one_line(&c.name),
            one_line(&c.fingerprint)
        )),
        ("group.invited", _, _) => event.group.as_ref().map(|g| {
            format!(
                "Invitation to the group {}: sotto group join {} (or decline).",
                one_line(&g.title),
                one_line(&g.name)
            )
        }),
        ("group.changed", _, _) => event.group.as_ref().map(group_line),
        _ => None,
    }
}

/// One group: `friends  (Friends) joined, admin, 3 members`.
pub fn group_line(g: &Group) -> String {
    let title = if g.title.is_empty() || g.title == g.name {
        String::new()
    } else {
        format!("  ({})", one_line(&g.title))
    };
    format!(
        "{}{title}  {}, {}, {} member{}",
        one_line(&g.name),
        one_line(&g.status),
        one_line(&g.role),
        g.member_count,
        if g.member_count == 1 { "" } else { "s" }
    )
}

/// `group.list`
pub fn groups(groups: &[Group]) -> String {
    if groups.is_empty() {
        return "No groups. Make one with: sotto group create NAME --member CONTACT".to_owned();
    }
    groups.iter().map(group_line).collect::<Vec<_>>().join("\n")
}

/// `group.info`
pub fn group_info(info: &GroupInfo) -> String {
    let mut out = vec![group_line(&info.group)];
    out.push(format!("id: {}", one_line(&info.group.id)));
    if !info.group.description.is_empty() {
        out.push(format!(
            "description: {}",
            one_line(&info.group.description)
        ));
    }
    if let Some(created) = info.created_ms.filter(|c| *c > 0) {
        out.push(format!("created: {}", time(created)));
    }
    if info.key_stale {
        out.push(
            "key: stale — a member who left can read until an admin seals a new secret".to_owned(),
        );
    }
    out.push("members:".to_owned());
    for m in &info.members {
        out.push(format!(
            "  {}{}  {}",
            one_line(&m.name),
            if m.admin { " (admin)" } else { "" },
            one_line(&m.address)
        ));
    }
    out.join("\n")
}

/// A timestamp in milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM` in UTC.
pub fn time(millis: i64) -> String {
    let seconds = millis.div_euclid(1000);
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        of_day / 3600,
        of_day % 3600 / 60
    )
}

/// The proleptic Gregorian date of a day number (days since 1970-01-01), after Howard
/// Hinnant's `civil_from_days` (<https://howardhinnant.github.io/date_algorithms.html>).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // [0, 11], March = 0
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `text` made safe to print on one line: control characters and bidirectional overrides
/// are shown escaped (`\n`, `\u{1b}`).
pub fn one_line(text: &str) -> String {
    escape(text, None)
}

/// Message text made safe to print: like [`one_line`], except that line breaks continue
/// on a new line indented under the message.
fn message_text(text: &str) -> String {
    escape(text, Some(CONTINUATION))
}

fn escape(text: &str, newline_indent: Option<&str>) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match (c, newline_indent) {
            ('\n', Some(indent)) => {
                out.push('\n');
                out.push_str(indent);
            }
            ('\t', _) => out.push('\t'),
            _ if c.is_control() || is_bidi_control(c) => out.extend(c.escape_default()),
            _ => out.push(c),
        }
    }
    out
}

/// Characters that reorder the text around them (Unicode bidi embeddings, overrides,
/// isolates and marks): shown escaped so that a name cannot masquerade as another.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A `label value` line with the value in a column.
fn field(label: &str, value: &str) -> String {
    format!("{label:<LABEL$}{value}")
}

/// A labelled list: the first item beside the label, the rest under it; `empty` if none.
fn list(label: &str, items: &[String], empty: &str) -> Vec<String> {
    if items.is_empty() {
        return vec![field(label, empty)];
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| field(if i == 0 { label } else { "" }, &one_line(item)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(direction: Direction, text: &str, state: &str) -> Message {
        Message {
            id: "00112233445566778899aabbccddeeff".to_owned(),
            contact: "bob".to_owned(),
            direction,
            from: if direction == Direction::Out {
                "me"
            } else {
                "bob"
            }
            .to_owned(),
            text: text.to_owned(),
            sent_at: Some(1_764_410_640_000),
            received_at: None,
            state: state.to_owned(),
            group: None,
            reply_to: None,
            reactions: Vec::new(),
            edited_at: None,
            deleted: false,
            expires_at: None,
            notice: false,
            attachments: Vec::new(),
        }
    }

    #[test]
    fn an_attachment_shows_its_name_type_size_and_progress_on_one_line() {
        let mut m = msg(Direction::In, "look", "received");
        m.attachments.push(api::Attachment {
            name: "cat\n.png".into(),
            mime: "image/png".into(),
            kind: "file".into(),
            size: 2 << 20,
            received: 1 << 20,
            state: "downloading".into(),
            path: None,
            error: None,
        });
        let line = message(&m);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("📎 cat\\n.png, image/png, 2.0 MiB, downloading 50%"),
            "{line}"
        );
        assert!(progress(&m.attachments[0]).contains("[##########----------]  50%"));
    }

    #[test]
    fn time_at_known_instants() {
        assert_eq!(time(0), "1970-01-01 00:00");
        assert_eq!(time(1_764_400_000_000), "2025-11-29 07:06");
        assert_eq!(time(951_782_400_000), "2000-02-29 00:00"); // leap day of a 400-year
        assert_eq!(time(4_107_542_400_000), "2100-03-01 00:00"); // 2100 is not a leap year
        assert_eq!(time(1_798_761_599_999), "2026-12-31 23:59");
        assert_eq!(time(-1), "1969-12-31 23:59");
        assert_eq!(time(-62_135_596_800_000), "0001-01-01 00:00");
    }

    #[test]
    fn time_never_overflows() {
        for millis in [i64::MIN, i64::MAX, i64::MIN + 1, i64::MAX - 1] {
            assert!(time(millis).len() >= 16);
        }
    }

    #[test]
    fn civil_from_days_walks_every_day_of_four_centuries() {
        // Each day number maps to the day after the previous one's date.
        let mut previous = civil_from_days(-146_097 - 1);
        for days in -146_097..=146_097 * 2 {
            let (y, m, d) = civil_from_days(days);
            let (py, pm, pd) = previous;
            let next_day = (y, m, d) == (py, pm, pd + 1);
            let next_month = (y, m, d) == (py, pm + 1, 1) && pd >= 28;
            let next_year = (y, m, d) == (py + 1, 1, 1) && (pm, pd) == (12, 31);
            assert!(
                next_day || next_month || next_year,
                "{previous:?} then {:?}",
                (y, m, d)
            );
            previous = (y, m, d);
        }
    }

    #[test]
    fn message_lines() {
        assert_eq!(
            message(&msg(Direction::Out, "hi", "delivered")),
            "2025-11-29 10:04  #00112233  me → bob: hi  [delivered]"
        );
        assert_eq!(
            message(&msg(Direction::In, "hello", "received")),
            "2025-11-29 10:04  #00112233  bob: hello"
        );
    }

    #[test]
    fn message_text_cannot_drive_the_terminal() {
        let line = message(&msg(
            Direction::In,
            "a\u{1b}[2Jb\r\u{202e}c\nsecond",
            "received",
        ));
        assert_eq!(
            line,
            "2025-11-29 10:04  #00112233  bob: a\\u{1b}[2Jb\\r\\u{202e}c\n                             second"
        );
        assert_eq!(one_line("x\ny"), "x\\ny");
    }

    #[test]
    fn what_happened_to_a_message_shows_on_its_line() {
        let mut m = msg(Direction::In, "hello", "received");
        m.reply_to = Some("aabbccddeeff00112233445566778899".to_owned());
        m.edited_at = Some(1);
        m.reactions = vec![crate::api::Reaction {
            from: "me".to_owned(),
            emoji: "👍".to_owned(),
        }];
        m.expires_at = Some(2);
        assert_eq!(
            message(&m),
            "2025-11-29 10:04  #00112233  bob: ↩ #aabbccdd hello (edited)  {👍 me}  ⏱"
        );
        m.deleted = true;
        assert!(message(&m).contains("(deleted)") && !message(&m).contains("hello"));
    }

    #[test]
    fn message_list_and_empty_list() {
        let list = messages(
            &[
                msg(Direction::Out, "hi", "queued"),
                msg(Direction::In, "yo", "received"),
            ],
            None,
        );
        assert_eq!(list.lines().count(), 2);
        assert_eq!(messages(&[], Some("bob")), "No messages with bob.");
        assert_eq!(messages(&[], None), "No messages.");
    }

    #[test]
    fn safety_number_in_three_rows_of_four() {
        let number = "12345 67890 11111 22222 33333 44444 55555 66666 77777 88888 99999 00000";
        assert_eq!(
            safety_rows(number),
            [
                "12345 67890 11111 22222",
                "33333 44444 55555 66666",
                "77777 88888 99999 00000"
            ]
        );
        let unspaced: String = number.split(' ').collect();
        assert_eq!(safety_rows(&unspaced), safety_rows(number));
        let text = verification(&Verification {
            contact: "bob".to_owned(),
            safety_number: number.to_owned(),
            fingerprint: "aaaa bbbb".to_owned(),
            own_fingerprint: "cccc dddd".to_owned(),
        });
        assert!(text.contains("    33333 44444 55555 66666\n"));
        assert!(text.contains("same number"));
        assert!(text.contains("bob's fingerprint: aaaa bbbb"));
    }

    #[test]
    fn contact_table_aligns_columns_and_marks_requests() {
        let contact = |name: &str, request| Contact {
            name: name.to_owned(),
            address: format!("addr-{name}"),
            fingerprint: "1a2b 3c4d".to_owned(),
            display_name: None,
            request,
        };
        let table = contacts(&[contact("bob", false), contact("carolina", true)]);
        assert_eq!(
            table,
            "NAME      FINGERPRINT  ADDRESS\n\
             bob       1a2b 3c4d    addr-bob\n\
             carolina  1a2b 3c4d    addr-carolina  request"
        );
        assert!(contacts(&[]).starts_with("No contacts yet."));
    }

    #[test]
    fn status_lists_addresses_and_peers() {
        let text = status(&Status {
            peer_id: "12D3KooW".to_owned(),
            listen_addrs: vec![
                "/ip4/127.0.0.1/tcp/1".to_owned(),
                "/ip6/::1/tcp/1".to_owned(),
            ],
            connected_peers: vec![],
            outbox: 1,
            account: None,
            version: Some("0.1.0".to_owned()),
        });
        assert_eq!(
            text,
            "peer id:      12D3KooW\n\
             listening on: /ip4/127.0.0.1/tcp/1/p2p/12D3KooW\n\
             \x20             /ip6/::1/tcp/1/p2p/12D3KooW\n\
             connected:    0 peers\n\
             outbox:       1 message waiting for delivery\n\
             account:      none (create one with: sotto init --name NAME)\n\
             version:      0.1.0"
        );
    }

    #[test]
    fn qr_code_renders_with_half_blocks() -> anyhow::Result<()> {
        let code = qr("sotto:AAAA")?;
        assert!(code.lines().count() > 10);
        assert!(code.contains('█') || code.contains('▀') || code.contains('▄'));
        assert!(qr(&"x".repeat(10_000)).is_err());
        Ok(())
    }

    #[test]
    fn a_group_message_names_its_group_and_sender() {
        let mut m = msg(Direction::In, "hi all", "received");
        m.group = Some("friends".to_owned());
        m.from = "carol~Ab3dE9".to_owned();
        assert!(message(&m).ends_with("[friends] carol~Ab3dE9: hi all"));
        let mut out = msg(Direction::Out, "me too", "on_hosts");
        out.group = Some("friends".to_owned());
        assert!(message(&out).ends_with("[friends] me: me too  [on_hosts]"));
    }
}
