//! What an accepted API request asks the fake to do, parsed and checked for shape (the HTTP layer
//! turns JSON into these), and what the fake answers synchronously when it refuses one.

use std::collections::BTreeMap;

/// `SetUser` with `action: "create"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CreateUser {
    /// As sent, `username` included (the HTTP layer has checked that it is there).
    pub profile: BTreeMap<String, String>,
    pub password: Option<String>,
    pub groups: Vec<String>,
    pub auth_mode: Option<String>,
    pub override_mandatory: bool,
}

/// `SetUser` with `action: "update"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UpdateUser {
    pub uid: String,
    /// Merge semantics: only the keys given change; an empty value clears the key; a `username`
    /// different from `uid` renames the user.
    pub profile: BTreeMap<String, String>,
    pub password: Option<String>,
    pub groups: Vec<GroupChange>,
    pub override_mandatory: bool,
}

/// One entry of an update's `groups`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GroupChange {
    Add(String),
    Remove(String),
}

/// A `SetUser` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SetUser {
    Create(CreateUser),
    Update(UpdateUser),
    Activate { uid: String },
    Deactivate { uid: String },
}

/// A `SetUsers` request (`activate` or `deactivate` several users).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SetUsers {
    pub activate: bool,
    pub uids: Vec<String>,
}

/// The most uids one `SetUsers` request may name.
pub const MAX_SET_USERS: usize = 500;

/// A synchronous refusal: the request gets this answer instead of 202 and changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// 400: a bad parameter.
    BadRequest(String),
    /// 404: the user named by `uid` does not exist.
    NotFound(String),
    /// 409: the user to create exists already.
    Conflict(String),
}

/// The final result of an accepted `SetUser`/`SetUsers`, decided when it is accepted and shown
/// by `/status/<tid>` once the tid stops being pending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub success: bool,
    pub message: String,
    /// uid -> what went wrong for that user.
    pub errors: BTreeMap<String, String>,
}

impl Outcome {
    pub(crate) fn success(message: impl Into<String>) -> Self {
        Self {
            success: true,
            message: message.into(),
            errors: BTreeMap::new(),
        }
    }

    pub(crate) fn failed(uid: &str, problems: &[String]) -> Self {
        Self {
            success: false,
            message: "failed".to_owned(),
            errors: BTreeMap::from([(uid.to_owned(), problems.join("; "))]),
        }
    }
}
