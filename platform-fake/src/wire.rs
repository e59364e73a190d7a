//! The API's JSON request bodies and their translation into [`crate::command`]s. Anything that
//! does not parse, or a parameter with a bad shape, becomes a 400 message here.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::command::{CreateUser, GroupChange, SetUser, SetUsers, UpdateUser};

/// Parses a JSON body, with the parser's message (it names the line and column) on failure.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("the request body must be a JSON object with params".to_owned());
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))
}

fn required(value: Option<String>, name: &str) -> Result<String, String> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(format!("{name} is required")),
    }
}

#[derive(Deserialize)]
struct UidBody {
    params: UidParams,
}

#[derive(Deserialize)]
struct UidParams {
    uid: Option<String>,
}

/// `GetUser` and `DeleteUser`: `params.uid`.
pub(crate) fn uid(body: &[u8]) -> Result<String, String> {
    let body: UidBody = parse(body)?;
    required(body.params.uid, "params.uid")
}

/// `GetProfileFields` takes no parameters; a body, if any, must still be JSON.
pub(crate) fn no_params(body: &[u8]) -> Result<(), String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| format!("invalid request body: {e}"))
}

#[derive(Deserialize)]
struct SetUserBody {
    params: SetUserParams,
    #[serde(default)]
    profile: BTreeMap<String, String>,
    password: Option<Password>,
    #[serde(default)]
    groups: Vec<GroupEntry>,
}

#[derive(Deserialize)]
struct SetUserParams {
    action: String,
    uid: Option<String>,
    auth_mode: Option<String>,
    /// Accepted and ignored: the fake sends no mail.
    #[serde(default)]
    #[allow(dead_code)]
    send_welcome: Option<bool>,
    #[serde(default)]
    override_mandatory_check: Option<bool>,
    /// Accepted and ignored: the fake never calls back.
    #[serde(default)]
    #[allow(dead_code)]
    callback: Option<String>,
}

#[derive(Deserialize)]
struct Password {
    value: String,
}

#[derive(Deserialize)]
struct GroupEntry {
    name: String,
    action: Option<String>,
}

/// `SetUser`.
pub(crate) fn set_user(body: &[u8]) -> Result<SetUser, String> {
    let body: SetUserBody = parse(body)?;
    let params = body.params;
    let override_mandatory = params.override_mandatory_check.unwrap_or(false);
    let password = body.password.map(|p| p.value);
    if body.groups.iter().any(|g| g.name.trim().is_empty()) {
        return Err("groups[].name must not be empty".to_owned());
    }
    match params.action.as_str() {
        "create" => {
            if let Some(mode) = &params.auth_mode
                && mode != "sso"
                && mode != "forms"
            {
                return Err(format!(
                    "params.auth_mode must be sso or forms, got '{mode}'"
                ));
            }
            if body.profile.get("username").is_none_or(String::is_empty) {
                return Err("profile.username is required".to_owned());
            }
            let groups = body
                .groups
                .into_iter()
                .map(|g| match g.action.as_deref() {
                    None | Some("add") => Ok(g.name),
                    Some(other) => Err(format!(
                        "groups[].action on create can only be add, got '{other}'"
                    )),
                })
                .collect::<Result<_, _>>()?;
            Ok(SetUser::Create(CreateUser {
                profile: body.profile,
                password,
                groups,
                auth_mode: params.auth_mode,
                override_mandatory,
            }))
        }
        "update" => {
            let groups = body
                .groups
                .into_iter()
                .map(|g| match g.action.as_deref() {
                    None | Some("add") => Ok(GroupChange::Add(g.name)),
                    Some("remove") => Ok(GroupChange::Remove(g.name)),
                    Some(other) => Err(format!(
                        "groups[].action must be add or remove, got '{other}'"
                    )),
                })
                .collect::<Result<_, _>>()?;
            Ok(SetUser::Update(UpdateUser {
                uid: required(params.uid, "params.uid")?,
                profile: body.profile,
                password,
                groups,
                override_mandatory,
            }))
        }
        "activate" => Ok(SetUser::Activate {
            uid: required(params.uid, "params.uid")?,
        }),
        "deactivate" => Ok(SetUser::Deactivate {
            uid: required(params.uid, "params.uid")?,
        }),
        other => Err(format!(
            "params.action must be create, update, activate or deactivate, got '{other}'"
        )),
    }
}

#[derive(Deserialize)]
struct SetUsersBody {
    params: SetUsersParams,
}

#[derive(Deserialize)]
struct SetUsersParams {
    action: String,
    uids: Vec<String>,
}

/// `SetUsers` (the uid limit is the tenant's to check).
pub(crate) fn set_users(body: &[u8]) -> Result<SetUsers, String> {
    let body: SetUsersBody = parse(body)?;
    let activate = match body.params.action.as_str() {
        "activate" => true,
        "deactivate" => false,
        other => {
            return Err(format!(
                "params.action must be activate or deactivate, got '{other}'"
            ));
        }
    };
    if body.params.uids.iter().any(String::is_empty) {
        return Err("params.uids must not contain empty names".to_owned());
    }
    Ok(SetUsers {
        activate,
        uids: body.params.uids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_body_becomes_a_create_command() {
        let body = br#"{"params":{"action":"create","auth_mode":"sso","send_welcome":false},
            "profile":{"username":"ada","forename":"Ada"},"password":{"value":"pw"},
            "groups":[{"name":"Staff"}]}"#;
        let Ok(SetUser::Create(c)) = set_user(body) else {
            panic!("not a create")
        };
        assert_eq!(c.profile["username"], "ada");
        assert_eq!(c.password.as_deref(), Some("pw"));
        assert_eq!(c.groups, vec!["Staff".to_owned()]);
        assert_eq!(c.auth_mode.as_deref(), Some("sso"));
    }

    #[test]
    fn an_update_body_becomes_an_update_with_group_changes() {
        let body = br#"{"params":{"action":"update","uid":"ada"},"profile":{"mail":""},
            "groups":[{"name":"A","action":"add"},{"name":"B","action":"remove"},{"name":"C"}]}"#;
        let Ok(SetUser::Update(u)) = set_user(body) else {
            panic!("not an update")
        };
        assert_eq!(u.uid, "ada");
        assert_eq!(u.profile["mail"], "");
        assert_eq!(
            u.groups,
            vec![
                GroupChange::Add("A".into()),
                GroupChange::Remove("B".into()),
                GroupChange::Add("C".into())
            ]
        );
    }

    #[test]
    fn bad_shapes_are_refused() {
        for body in [
            &b""[..],
            b"not json",
            br#"{"profile":{"username":"ada"}}"#,
            br#"{"params":{"action":"create"},"profile":{"forename":"Ada"}}"#,
            br#"{"params":{"action":"create"},"profile":{"username":""}}"#,
            br#"{"params":{"action":"create","auth_mode":"ldap"},"profile":{"username":"a"}}"#,
            br#"{"params":{"action":"create"},"profile":{"username":"a","age":3}}"#,
            br#"{"params":{"action":"update"},"profile":{}}"#,
            br#"{"params":{"action":"update","uid":"a"},"groups":[{"name":"G","action":"x"}]}"#,
            br#"{"params":{"action":"update","uid":"a"},"groups":[{"name":""}]}"#,
            br#"{"params":{"action":"delete","uid":"a"}}"#,
        ] {
            assert!(set_user(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn set_users_needs_a_known_action_and_a_uid_list() {
        let ok = set_users(br#"{"params":{"action":"deactivate","uids":["a","b"]}}"#);
        assert_eq!(
            ok,
            Ok(SetUsers {
                activate: false,
                uids: vec!["a".into(), "b".into()]
            })
        );
        assert!(set_users(br#"{"params":{"action":"delete","uids":["a"]}}"#).is_err());
        assert!(set_users(br#"{"params":{"action":"activate"}}"#).is_err());
        assert!(set_users(br#"{"params":{"action":"activate","uids":"a"}}"#).is_err());
    }

    #[test]
    fn uid_and_no_params_bodies() {
        assert_eq!(uid(br#"{"params":{"uid":"ada"}}"#), Ok("ada".to_owned()));
        assert!(uid(br#"{"params":{}}"#).is_err());
        assert!(uid(b"{").is_err());
        assert_eq!(no_params(b""), Ok(()));
        assert_eq!(no_params(br#"{"params":{}}"#), Ok(()));
        assert!(no_params(b"{").is_err());
    }
}
