//! The control API's methods: their parameters, the service call each makes, and the error
//! code each failure maps to. docs/api.md is the contract.

use serde_json::Value;

use super::*;
use crate::service::{AccountError, ContactError, GroupError, MessageError, PeerError};
use crate::store::StoreError;

impl From<AccountError> for RpcError {
    fn from(e: AccountError) -> Self {
        let code = match &e {
            AccountError::NoAccount => NO_ACCOUNT,
            AccountError::AccountExists => ACCOUNT_EXISTS,
            AccountError::BadName => INVALID_PARAMS,
            _ => INTERNAL_ERROR,
        };
        RpcError::new(code, e.to_string())
    }
}

impl From<ContactError> for RpcError {
    fn from(e: ContactError) -> Self {
        let code = match &e {
            ContactError::NoAccount => NO_ACCOUNT,
            ContactError::Unknown(_) => UNKNOWN_CONTACT,
            ContactError::BadCard(_) => BAD_CARD,
            ContactError::NameTaken(_) => NAME_TAKEN,
            ContactError::OwnCard => OWN_CARD,
            ContactError::BadName
            | ContactError::TooMany { .. }
            | ContactError::NotARequest(_)
            | ContactError::NotBlocked(_) => INVALID_PARAMS,
            _ => INTERNAL_ERROR,
        };
        RpcError::new(code, e.to_string())
    }
}

impl From<MessageError> for RpcError {
    fn from(e: MessageError) -> Self {
        match e {
            MessageError::Contact(c) => RpcError::from(*c),
            MessageError::Group(g) => RpcError::from(*g),
            e => {
                let code = match &e {
                    MessageError::NoAccount => NO_ACCOUNT,
                    MessageError::Empty
                    | MessageError::TooLong { .. }
                    | MessageError::Blocked(_)
                    | MessageError::Content(_)
                    | MessageError::UnknownMessage(_)
                    | MessageError::AmbiguousMessage(_)
                    | MessageError::NotYours(_)
                    | MessageError::TooLate { .. }
                    | MessageError::Deleted
                    | MessageError::NotAnEmoji(_)
                    | MessageError::File(_)
                    | MessageError::NoAttachment(_)
                    | MessageError::BadTimer { .. } => INVALID_PARAMS,
                    _ => INTERNAL_ERROR,
                };
                RpcError::new(code, e.to_string())
            }
        }
    }
}

impl From<GroupError> for RpcError {
    fn from(e: GroupError) -> Self {
        match e {
            GroupError::Contact(c) => RpcError::from(*c),
            GroupError::Invite(m) => RpcError::from(*m),
            e => {
                let code = match &e {
                    GroupError::NoAccount => NO_ACCOUNT,
                    GroupError::Unknown(_) => UNKNOWN_GROUP,
                    GroupError::NameTaken(_) => NAME_TAKEN,
                    GroupError::NotAdmin(_) => NOT_ADMIN,
                    GroupError::NotMember { .. }
                    | GroupError::NotJoined(_)
                    | GroupError::NotInvited(_) => NOT_MEMBER,
                    GroupError::BadName
                    | GroupError::AlreadyMember(_)
                    | GroupError::Request(_)
                    | GroupError::TooMany { .. }
                    | GroupError::Full { .. }
                    | GroupError::Empty
                    | GroupError::TooLong { .. } => INVALID_PARAMS,
                    _ => INTERNAL_ERROR,
                };
                RpcError::new(code, e.to_string())
            }
        }
    }
}

impl From<PeerError> for RpcError {
    fn from(e: PeerError) -> Self {
        let code = match &e {
            PeerError::NotAPeerId(_) | PeerError::NotBanned(_) => INVALID_PARAMS,
            _ => INTERNAL_ERROR,
        };
        RpcError::new(code, e.to_string())
    }
}

impl From<StoreError> for RpcError {
    fn from(e: StoreError) -> Self {
        RpcError::new(INTERNAL_ERROR, e.to_string())
    }
}

pub(super) fn str_param<'a>(params: &'a Value, name: &str) -> Result<&'a str, RpcError> {
    params
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::new(INVALID_PARAMS, format!("missing string parameter {name:?}")))
}

/// A list of strings (absent: empty).
pub(super) fn str_list_param(params: &Value, name: &str) -> Result<Vec<String>, RpcError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= sotto_protocol::group::MAX_ADDED => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    RpcError::new(INVALID_PARAMS, format!("{name:?} must list strings"))
                })
            })
            .collect(),
        Some(_) => Err(RpcError::new(
            INVALID_PARAMS,
            format!(
                "parameter {name:?} must be a list of at most {} strings",
                sotto_protocol::group::MAX_ADDED
            ),
        )),
    }
}

pub(super) fn opt_str_param<'a>(
    params: &'a Value,
    name: &str,
) -> Result<Option<&'a str>, RpcError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(RpcError::new(
            INVALID_PARAMS,
            format!("parameter {name:?} must be a string"),
        )),
    }
}

pub(super) fn opt_bool_param(params: &Value, name: &str) -> Result<Option<bool>, RpcError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| {
            RpcError::new(
                INVALID_PARAMS,
                format!("parameter {name:?} must be true or false"),
            )
        }),
    }
}

pub(super) fn opt_u64_param(params: &Value, name: &str) -> Result<Option<u64>, RpcError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            RpcError::new(
                INVALID_PARAMS,
                format!("parameter {name:?} must be a non-negative integer"),
            )
        }),
    }
}

pub(super) async fn dispatch(node: &Node, method: &str, params: &Value) -> Result<Value, RpcError> {
    let service = &node.service;
    if !(params.is_object()) {
        return Err(RpcError::new(INVALID_PARAMS, "params must be an object"));
    }
    match method {
        "account.create" => to_value(service.create_account(str_param(params, "name")?).await),
        "account.get" => to_value(service.account().await),
        "node.status" => {
            let mut status = to_value(service.status().await)?;
            if let Some(object) = status.as_object_mut() {
                let paths = node.paths.view(node.private).await;
                object.insert("paths".into(), to_value::<_, RpcError>(Ok(paths))?);
            }
            Ok(status)
        }
        "paths.status" => to_value::<_, RpcError>(Ok(node.paths.view(node.private).await)),
        "contact.add" => to_value(
            service
                .add_contact(str_param(params, "card")?, opt_str_param(params, "name")?)
                .await,
        ),
        "contact.list" => to_value(service.contacts()),
        "contact.verify" => to_value(service.verify(str_param(params, "contact")?).await),
        "contact.block" => to_value(service.block(str_param(params, "contact")?).await),
        "contact.unblock" => to_value(service.unblock(str_param(params, "contact")?).await),
        "peers.bans" => to_value(service.bans()),
        "peers.unban" => to_value(service.unban(str_param(params, "peer")?).await),
        "message.send" => match opt_str_param(params, "file")? {
            Some(file) => {
                let kind = opt_str_param(params, "kind")?.unwrap_or("file");
                let kind = crate::service::attachments::parse_kind(kind).ok_or_else(|| {
                    RpcError::new(
                        INVALID_PARAMS,
                        format!("kind must be file, voice, sticker or gif, not {kind:?}"),
                    )
                })?;
                to_value(
                    service
                        .send_file(
                            str_param(params, "to")?,
                            std::path::Path::new(file),
                            opt_str_param(params, "text")?.unwrap_or(""),
                            kind,
                            opt_str_param(params, "reply_to")?,
                        )
                        .await,
                )
            }
            None => to_value(
                service
                    .send_post(
                        str_param(params, "to")?,
                        str_param(params, "text")?,
                        opt_str_param(params, "reply_to")?,
                    )
                    .await,
            ),
        },
        "attachment.get" => to_value(
            service
                .attachment_get(
                    str_param(params, "id")?,
                    opt_str_param(params, "out")?.map(std::path::Path::new),
                )
                .await,
        ),
        "message.react" => to_value(
            service
                .react(
                    str_param(params, "chat")?,
                    str_param(params, "id")?,
                    str_param(params, "emoji")?,
                )
                .await,
        ),
        "message.edit" => to_value(
            service
                .edit(
                    str_param(params, "chat")?,
                    str_param(params, "id")?,
                    str_param(params, "text")?,
                )
                .await,
        ),
        "message.delete" => to_value(
            service
                .delete(
                    str_param(params, "chat")?,
                    str_param(params, "id")?,
                    opt_bool_param(params, "for_everyone")?.unwrap_or(false),
                )
                .await,
        ),
        "chat.read" => to_value(service.mark_read(str_param(params, "chat")?).await),
        "chat.disappearing" => {
            let seconds = opt_u64_param(params, "seconds")?;
            let ms = seconds
                .map(|s| {
                    s.checked_mul(1000).ok_or_else(|| {
                        RpcError::new(INVALID_PARAMS, "parameter \"seconds\" is out of range")
                    })
                })
                .transpose()?;
            to_value(
                service
                    .set_disappearing(str_param(params, "chat")?, ms)
                    .await,
            )
        }
        "message.list" => {
            let limit =
                opt_u64_param(params, "limit")?.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
            to_value(service.messages(opt_str_param(params, "contact")?, limit))
        }
        "requests.list" => to_value(service.requests()),
        "requests.accept" => to_value(service.accept(str_param(params, "contact")?).await),
        "requests.reject" => to_value(service.reject(str_param(params, "contact")?).await),
        "mailbox.stats" => to_value(node.host.stats()),
        "group.create" => to_value(
            service
                .group_create(
                    str_param(params, "name")?,
                    &str_list_param(params, "members")?,
                )
                .await,
        ),
        "group.add" => to_value(
            service
                .group_add(
                    str_param(params, "group")?,
                    &str_list_param(params, "members")?,
                )
                .await,
        ),
        "group.remove" => to_value(
            service
                .group_remove(str_param(params, "group")?, str_param(params, "member")?)
                .await,
        ),
        "group.leave" => to_value(service.group_leave(str_param(params, "group")?).await),
        "group.rename" => to_value(
            service
                .group_rename(str_param(params, "group")?, str_param(params, "name")?)
                .await,
        ),
        "group.describe" => to_value(
            service
                .group_describe(str_param(params, "group")?, str_param(params, "text")?)
                .await,
        ),
        "group.admin" => to_value(
            service
                .group_make_admin(str_param(params, "group")?, str_param(params, "member")?)
                .await,
        ),
        "group.list" => to_value(service.group_list().await),
        "group.info" => to_value(service.group_info(str_param(params, "group")?).await),
        "group.join" => to_value(service.group_join(str_param(params, "group")?).await),
        "group.decline" => to_value(service.group_decline(str_param(params, "group")?).await),
        _ => Err(RpcError::new(
            METHOD_NOT_FOUND,
            format!("no method {method:?}; see docs/api.md"),
        )),
    }
}

pub(super) fn to_value<T: serde::Serialize, E: Into<RpcError>>(
    v: Result<T, E>,
) -> Result<Value, RpcError> {
    v.map_err(Into::into).and_then(|v| {
        serde_json::to_value(v).map_err(|e| RpcError::new(INTERNAL_ERROR, e.to_string()))
    })
}
