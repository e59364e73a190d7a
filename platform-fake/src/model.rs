//! The fake's public data types: users as the fake stores them, per-tenant call counters, and the
//! profile-field definitions `GetProfileFields` answers with.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The state of an active user account.
pub const ACTIVATED: &str = "Activated";
/// The state of a deactivated user account.
pub const DEACTIVATED: &str = "Deactivated";

/// A user as the fake stores it.
///
/// `profile` holds every profile field except `username` (the `username` field is the source of
/// truth; a `username` key given in `profile` is ignored when seeding). Empty values are never
/// stored: an empty string in an update clears the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FakeUser {
    pub username: String,
    /// Field key -> value: `forename`, `surname`, `mail`, custom keys.
    pub profile: BTreeMap<String, String>,
    pub groups: BTreeSet<String>,
    /// [`ACTIVATED`] or [`DEACTIVATED`].
    pub state: String,
    /// Whether a password was ever given (the value itself is never kept).
    pub password_set: bool,
    /// `sso` or `forms`, as given at creation.
    pub auth_mode: Option<String>,
}

impl Default for FakeUser {
    fn default() -> Self {
        Self {
            username: String::new(),
            profile: BTreeMap::new(),
            groups: BTreeSet::new(),
            state: ACTIVATED.to_owned(),
            password_set: false,
            auth_mode: None,
        }
    }
}

impl FakeUser {
    /// An activated user with no profile, groups or password.
    pub fn new(username: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            ..Self::default()
        }
    }

    /// Sets one profile field (builder style, for seeding).
    pub fn with_field(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.profile.insert(key.into(), value.into());
        self
    }

    /// Adds the user to a group (builder style, for seeding).
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.groups.insert(group.into());
        self
    }
}

/// API call names, as counted by [`CallCounts`].
pub mod call {
    pub const GET_PROFILE_FIELDS: &str = "GetProfileFields";
    pub const GET_USER: &str = "GetUser";
    pub const SET_USER: &str = "SetUser";
    pub const SET_USERS: &str = "SetUsers";
    pub const DELETE_USER: &str = "DeleteUser";
    pub const STATUS: &str = "status";
}

/// Per-tenant request counters.
///
/// `calls` counts every request that passed authentication, by call name (see [`call`]),
/// including the ones answered with an injected fault; the `injected_*` counters say how many of
/// them got which fault.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CallCounts {
    pub calls: BTreeMap<String, u64>,
    pub injected_429: u64,
    pub injected_5xx: u64,
    pub injected_drops: u64,
    pub injected_timeouts: u64,
    /// Successful creates, by username: more than one for a username means the user was
    /// created, deleted and created again (the platform refuses a second create with 409).
    pub creates: BTreeMap<String, u64>,
    /// Creates refused with 409 because the username already existed.
    pub create_conflicts: u64,
}

impl CallCounts {
    /// The number of authenticated requests to `call` (0 if none).
    pub fn get(&self, call: &str) -> u64 {
        self.calls.get(call).copied().unwrap_or(0)
    }

    /// The number of usernames created more than once, summed over their extra creates.
    pub fn duplicate_creates(&self) -> u64 {
        self.creates.values().map(|n| n.saturating_sub(1)).sum()
    }

    /// The number of authenticated write requests (`SetUser`, `SetUsers`, `DeleteUser`).
    pub fn writes(&self) -> u64 {
        [call::SET_USER, call::SET_USERS, call::DELETE_USER]
            .iter()
            .map(|c| self.get(c))
            .sum()
    }

    /// The number of authenticated requests over all calls.
    pub fn total(&self) -> u64 {
        self.calls.values().sum()
    }

    pub(crate) fn record(&mut self, call: &str) {
        *self.calls.entry(call.to_owned()).or_insert(0) += 1;
    }
}

/// Whether a profile field must, may, or may only by an admin be filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FieldMode {
    Mandatory,
    Optional,
    AdminOnly,
}

/// The value type of a profile field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FieldType {
    Text,
    /// `YYYY-MM-DD`, a real calendar date.
    Date,
    SingleChoice,
    /// Several of `values`, comma-separated (the fake's assumption).
    MultipleChoice,
    #[serde(rename = "OU")]
    Ou,
}

/// One entry of the `GetProfileFields` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileField {
    pub label: String,
    pub mode: FieldMode,
    pub order: u32,
    #[serde(rename = "type")]
    pub kind: FieldType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// The profile fields every tenant is seeded with.
pub fn seed_profile_fields() -> BTreeMap<String, ProfileField> {
    let field = |label: &str, mode, order, kind| ProfileField {
        label: label.to_owned(),
        mode,
        order,
        kind,
        values: None,
    };
    let departments = ["Sales", "Engineering", "Support", "Finance", "HR"];
    BTreeMap::from([
        (
            "username".to_owned(),
            field("Username", FieldMode::Mandatory, 1, FieldType::Text),
        ),
        (
            "forename".to_owned(),
            field("First name", FieldMode::Mandatory, 2, FieldType::Text),
        ),
        (
            "surname".to_owned(),
            field("Surname", FieldMode::Mandatory, 3, FieldType::Text),
        ),
        (
            "mail".to_owned(),
            field("Email address", FieldMode::Optional, 4, FieldType::Text),
        ),
        (
            "timezone".to_owned(),
            field("Time zone", FieldMode::Optional, 5, FieldType::Text),
        ),
        (
            "department".to_owned(),
            ProfileField {
                values: Some(departments.iter().map(|d| (*d).to_owned()).collect()),
                ..field(
                    "Department",
                    FieldMode::Mandatory,
                    6,
                    FieldType::SingleChoice,
                )
            },
        ),
        (
            "employee_id".to_owned(),
            field("Employee ID", FieldMode::Optional, 7, FieldType::Text),
        ),
        (
            "start_date".to_owned(),
            field("Start date", FieldMode::Optional, 8, FieldType::Date),
        ),
        (
            "cost_centre".to_owned(),
            field("Cost centre", FieldMode::AdminOnly, 9, FieldType::Text),
        ),
    ])
}
