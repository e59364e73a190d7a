//! One data row of the file, validated into what should be true of the user afterwards. Validation
//! needs no API call, so every row is checked before any write.

use crate::import::template::{Column, Template};
use crate::platform::model::FieldKind;
use shared::registry::{EmptyCells, ImportOptions};

/// The longest cell accepted, in characters.
pub const MAX_CELL_CHARS: usize = 1024;

/// What the row asks for the account's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateChange {
    Activate,
    Deactivate,
}

/// A valid row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowInput {
    pub line: u64,
    pub username: String,
    pub new_username: Option<String>,
    pub password: Option<String>,
    pub state: Option<StateChange>,
    pub groups: Vec<String>,
    /// Profile key → value; `""` clears the field (only with `empty_cells = "clear"`).
    pub profile: Vec<(String, String)>,
}

impl RowInput {
    /// A fingerprint of what the row asks for (everything but its line and its password, which
    /// only matters when a user is created), for `skip_unchanged`. Hex SHA1.
    pub fn fingerprint(&self) -> String {
        use sha1::{Digest, Sha1};
        let mut h = Sha1::new();
        // Length-prefixed parts: no two different rows give the same byte stream.
        let mut part = |s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        part(&self.username.to_lowercase());
        part(self.new_username.as_deref().unwrap_or(""));
        part(match self.state {
            None => "",
            Some(StateChange::Activate) => "activate",
            Some(StateChange::Deactivate) => "deactivate",
        });
        let mut groups: Vec<String> = self.groups.iter().map(|g| g.to_lowercase()).collect();
        groups.sort();
        part(&groups.len().to_string());
        for g in &groups {
            part(g);
        }
        let mut profile = self.profile.clone();
        profile.sort();
        part(&profile.len().to_string());
        for (k, v) in &profile {
            part(k);
            part(v);
        }
        hex::encode(h.finalize())
    }
}

/// Why a row is refused before any call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    /// As far as it could be read.
    pub username: String,
    pub message: String,
}

/// Words accepted in `Account state` (case-insensitive). Locked and Deleted are platform states
/// an import never sets: a row asking for them is refused rather than guessed at.
fn parse_state(raw: &str) -> Result<Option<StateChange>, String> {
    match raw.trim().to_lowercase().as_str() {
        "" => Ok(None),
        "activated" | "active" | "activate" | "enabled" | "enable" | "yes" | "y" | "1" | "true" => {
            Ok(Some(StateChange::Activate))
        }
        "deactivated" | "inactive" | "deactivate" | "disabled" | "disable" | "suspended" | "no"
        | "n" | "0" | "false" => Ok(Some(StateChange::Deactivate)),
        "locked" | "deleted" => Err(format!(
            "Account state {:?} cannot be set by an import (use Activated or Deactivated)",
            raw.trim()
        )),
        _ => Err(format!(
            "Account state {:?} is not one of Activated, Deactivated",
            raw.trim()
        )),
    }
}

fn valid_username(u: &str) -> Result<(), String> {
    if u.is_empty() {
        return Err("Username is empty".into());
    }
    if u.chars().count() > 255 {
        return Err("Username is longer than 255 characters".into());
    }
    if u.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "Username {u:?} holds white space or control characters"
        ));
    }
    Ok(())
}

fn valid_date(v: &str) -> bool {
    chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").is_ok()
}

/// Validates one record against the template. `record` holds the raw cells.
pub fn validate(
    line: u64,
    record: &[&str],
    template: &Template,
    options: &ImportOptions,
) -> Result<RowInput, RowError> {
    let raw_username = record
        .get(template.username)
        .map(|s| s.trim())
        .unwrap_or("");
    let fail = |message: String| RowError {
        line,
        username: raw_username.chars().take(255).collect(),
        message,
    };
    if record.len() != template.columns.len() {
        return Err(fail(format!(
            "the row has {} cells, the header has {}",
            record.len(),
            template.columns.len()
        )));
    }
    valid_username(raw_username).map_err(fail)?;
    let mut row = RowInput {
        line,
        username: raw_username.to_owned(),
        new_username: None,
        password: None,
        state: None,
        groups: Vec::new(),
        profile: Vec::new(),
    };
    let mut problems = Vec::new();
    for (col, cell) in template.columns.iter().zip(record) {
        if let Err(problem) = read_cell(&mut row, col, cell, template, options) {
            problems.push(problem);
        }
    }
    if problems.is_empty() {
        Ok(row)
    } else {
        Err(fail(problems.join("; ")))
    }
}

/// Reads one cell into `row`, or says what is wrong with it.
fn read_cell(
    row: &mut RowInput,
    col: &Column,
    cell: &str,
    template: &Template,
    options: &ImportOptions,
) -> Result<(), String> {
    if cell.chars().count() > MAX_CELL_CHARS {
        return Err(format!("a cell is longer than {MAX_CELL_CHARS} characters"));
    }
    // Passwords are taken exactly as written; everything else is trimmed.
    let value = cell.trim();
    match col {
        Column::Username | Column::Unknown(_) => {}
        Column::NewUsername => {
            if !value.is_empty() && value != row.username {
                valid_username(value).map_err(|e| format!("New username: {e}"))?;
                row.new_username = Some(value.to_owned());
            }
        }
        Column::Password => {
            if !cell.is_empty() {
                row.password = Some(cell.to_owned());
            }
        }
        Column::AccountState => row.state = parse_state(value)?,
        Column::Groups => row.groups = groups(value, options.groups_separator),
        Column::Field(key) => {
            if let Some(v) = profile_value(key, value, template, options)? {
                row.profile.push((key.clone(), v));
            }
        }
    }
    Ok(())
}

/// The groups a cell names, trimmed, without empty names or case-insensitive repeats.
fn groups(value: &str, separator: char) -> Vec<String> {
    let mut groups: Vec<String> = value
        .split(separator)
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    groups.retain(|g| seen.insert(g.to_lowercase()));
    groups
}

/// The value to send for a profile field's cell: `None` when the field is unknown or an empty
/// cell leaves it as it is, `""` when an empty cell clears it.
fn profile_value(
    key: &str,
    value: &str,
    template: &Template,
    options: &ImportOptions,
) -> Result<Option<String>, String> {
    let Some(field) = template.fields.get(key) else {
        return Ok(None);
    };
    if value.is_empty() {
        let clear = options.empty_cells == EmptyCells::Clear
            && field.mode != crate::platform::model::FieldMode::Mandatory;
        return Ok(clear.then(String::new));
    }
    checked_value(key, field, value).map(Some)
}

/// The value to send for a field, or why it is not acceptable.
fn checked_value(
    key: &str,
    field: &crate::platform::model::ProfileField,
    value: &str,
) -> Result<String, String> {
    let label = &field.label;
    match field.kind {
        FieldKind::SingleChoice => {
            let values = field.values.as_deref().unwrap_or_default();
            // Case-insensitive match, sent with the platform's own spelling.
            values
                .iter()
                .find(|v| v.eq_ignore_ascii_case(value) || v.to_lowercase() == value.to_lowercase())
                .cloned()
                .ok_or_else(|| {
                    let shown: Vec<&str> = values.iter().map(String::as_str).take(20).collect();
                    format!("{label} {value:?} is not one of: {}", shown.join(", "))
                })
        }
        FieldKind::Date if !valid_date(value) => {
            Err(format!("{label} {value:?} is not a date (YYYY-MM-DD)"))
        }
        _ if key == "mail" => shared::EmailAddress::parse(value)
            .map(|e| e.to_string())
            .map_err(|_| format!("{label} {value:?} is not a valid email address")),
        _ => Ok(value.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::template::Template;

    fn template(cols: &[&str]) -> Template {
        let header: Vec<String> = cols.iter().map(|s| s.to_string()).collect();
        Template::from_header(&header, &crate::import::template::tests_support::fields())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    const COLS: &[&str] = &[
        "Username",
        "First name",
        "Surname",
        "Email address",
        "Department",
        "Groups",
        "Account state",
        "New username",
        "Password",
    ];

    #[test]
    fn a_good_row_becomes_an_input() {
        let t = template(COLS);
        let r = validate(
            2,
            &[
                "jdoe",
                " Jane ",
                "Doe",
                "jane@x.org",
                "sales",
                "A; B;;A",
                "Deactivated",
                "",
                "pw ",
            ],
            &t,
            &ImportOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(r.username, "jdoe");
        assert_eq!(r.state, Some(StateChange::Deactivate));
        assert_eq!(r.groups, vec!["A".to_string(), "B".to_string()]);
        assert!(
            r.profile.contains(&("department".into(), "Sales".into())),
            "canonical spelling"
        );
        assert!(r.profile.contains(&("forename".into(), "Jane".into())));
        assert_eq!(r.password.as_deref(), Some("pw "));
    }

    #[test]
    fn bad_cells_are_all_named_with_the_line() {
        let t = template(COLS);
        let e = validate(
            7,
            &[
                "jdoe",
                "J",
                "D",
                "not-mail",
                "Marketing",
                "",
                "Locked",
                "",
                "",
            ],
            &t,
            &ImportOptions::default(),
        )
        .err()
        .unwrap_or_else(|| panic!("should fail"));
        assert_eq!(e.line, 7);
        assert_eq!(e.username, "jdoe");
        assert!(e.message.contains("Email address"), "{}", e.message);
        assert!(
            e.message.contains("Department \"Marketing\""),
            "{}",
            e.message
        );
        assert!(e.message.contains("Locked"), "{}", e.message);
    }

    #[test]
    fn ragged_rows_and_bad_usernames_are_refused() {
        let t = template(COLS);
        assert!(validate(3, &["jdoe", "J"], &t, &ImportOptions::default()).is_err());
        let mut cells = vec![""; COLS.len()];
        assert!(validate(4, &cells, &t, &ImportOptions::default()).is_err());
        cells[0] = "j doe";
        assert!(validate(4, &cells, &t, &ImportOptions::default()).is_err());
    }

    #[test]
    fn the_fingerprint_follows_what_the_row_asks_for() {
        let t = template(COLS);
        let row = |cells: [&str; 9]| {
            validate(2, &cells, &t, &ImportOptions::default())
                .unwrap_or_else(|e| panic!("{}", e.message))
        };
        let base = [
            "jdoe", "Jane", "Doe", "j@x.org", "Sales", "A;B", "", "", "pw",
        ];
        let fp = row(base).fingerprint();
        let mut other_line = row(base);
        other_line.line = 99;
        assert_eq!(other_line.fingerprint(), fp, "the line does not count");
        let mut reordered = base;
        reordered[5] = "b; a";
        assert_eq!(row(reordered).fingerprint(), fp, "group order and case");
        let mut new_pw = base;
        new_pw[8] = "other";
        assert_eq!(row(new_pw).fingerprint(), fp, "the password does not count");
        for (i, v) in [(2, "Dough"), (5, "A"), (6, "Deactivated"), (7, "jd")] {
            let mut changed = base;
            changed[i] = v;
            assert_ne!(row(changed).fingerprint(), fp, "cell {i}");
        }
    }

    #[test]
    fn empty_cells_keep_by_default_and_clear_on_request() {
        let t = template(COLS);
        let cells = ["jdoe", "", "", "", "", "", "", "", ""];
        let keep = validate(2, &cells, &t, &ImportOptions::default()).map(|r| r.profile);
        assert_eq!(keep, Ok(vec![]));
        let clear = ImportOptions {
            empty_cells: EmptyCells::Clear,
            ..ImportOptions::default()
        };
        let cleared = validate(2, &cells, &t, &clear).map(|r| r.profile);
        assert_eq!(
            cleared,
            Ok(vec![("mail".to_string(), String::new())]),
            "mandatory fields are never cleared"
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::import::template::Template;

    proptest! {
        /// Any cells: validation answers (a row or an error naming the line) and never panics.
        #[test]
        fn any_cells_are_validated_without_panic(
            cells in proptest::collection::vec(any::<String>(), 0..12),
            line in 1u64..1_000_000,
        ) {
            let header: Vec<String> = ["Username", "First name", "Surname", "Email address", "Department", "Groups", "Account state", "New username", "Password"]
                .iter().map(|s| s.to_string()).collect();
            let t = Template::from_header(&header, &crate::import::template::tests_support::fields())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let refs: Vec<&str> = cells.iter().map(String::as_str).collect();
            match validate(line, &refs, &t, &ImportOptions::default()) {
                Ok(r) => prop_assert_eq!(r.line, line),
                Err(e) => {
                    prop_assert_eq!(e.line, line);
                    prop_assert!(!e.message.is_empty());
                }
            }
        }
    }
}
