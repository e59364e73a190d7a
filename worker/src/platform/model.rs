//! The platform API's JSON shapes, as its public reference describes them. Unknown fields are
//! ignored so additions on the platform's side do not break us.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One entry of `GetProfileFields`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ProfileField {
    pub label: String,
    pub mode: FieldMode,
    #[serde(default)]
    pub order: i64,
    #[serde(rename = "type")]
    pub kind: FieldKind,
    #[serde(default)]
    pub values: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum FieldMode {
    Mandatory,
    Optional,
    AdminOnly,
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum FieldKind {
    Text,
    Date,
    SingleChoice,
    MultipleChoice,
    #[serde(rename = "OU")]
    Ou,
    #[serde(other)]
    Other,
}

/// `GetProfileFields`: key → field.
pub type ProfileFields = BTreeMap<String, ProfileField>;

/// `GetUser`'s answer (serialisable so that the guard's plan can keep it on disk for the import).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct UserRecord {
    #[serde(default)]
    pub profile: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub groups: Vec<GroupRef>,
    /// Not in the public reference's summary; read when present (see docs/platform-api.md).
    #[serde(default)]
    pub state: Option<String>,
}

impl UserRecord {
    /// A profile value as text (numbers and booleans as written).
    pub fn profile_text(&self, key: &str) -> Option<String> {
        match self.profile.get(key)? {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct GroupRef {
    pub name: String,
}

/// `GET /status/<tid>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusReport {
    #[serde(default)]
    pub message: String,
    pub status: u8,
    #[serde(default)]
    pub errors: BTreeMap<String, String>,
}

/// A write's final result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteResult {
    Succeeded,
    /// Status 3 (or 0 after acceptance): the platform's message, per-uid when given.
    Failed(String),
    /// Still pending when the status timeout ran out.
    Unconfirmed,
}
