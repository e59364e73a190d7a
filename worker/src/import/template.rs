//! The admin portal's "Import users" template: a header row of field labels (or keys), matched to
//! the tenant's profile fields case-, space- and underscore-insensitively, plus the columns that
//! are not profile fields: `New username`, `Password`, `Account state` and `Groups`.

use std::collections::BTreeMap;

use crate::platform::model::{FieldMode, ProfileField, ProfileFields};

/// What one column of the file feeds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Column {
    Username,
    NewUsername,
    Password,
    AccountState,
    Groups,
    /// A profile field, by key.
    Field(String),
    /// Not known: reported once, ignored.
    Unknown(String),
}

/// A header that cannot be imported at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the file is empty (no header row)")]
    Empty,
    #[error("no Username column (the header row is: {0})")]
    NoUsername(String),
    #[error("column {name:?} appears more than once (columns {first} and {second})")]
    Duplicate {
        name: String,
        first: usize,
        second: usize,
    },
}

/// The mapping of a file's columns.
#[derive(Debug, Clone)]
pub struct Template {
    pub columns: Vec<Column>,
    pub username: usize,
    pub fields: BTreeMap<String, ProfileField>,
}

/// Lowercase, without white space, `_`, `-` or a byte-order mark: `First name` = `first_name`.
pub fn normalize(header: &str) -> String {
    header
        .trim_start_matches('\u{feff}')
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '_' | '-'))
        .flat_map(char::to_lowercase)
        .collect()
}

impl Template {
    pub fn from_header(header: &[String], fields: &ProfileFields) -> Result<Self, HeaderError> {
        if header.is_empty() || header.iter().all(|h| h.trim().is_empty()) {
            return Err(HeaderError::Empty);
        }
        // Profile fields by normalised label first (what the template writes), then by key.
        let mut by_name: BTreeMap<String, String> = BTreeMap::new();
        for key in fields.keys() {
            by_name.entry(normalize(key)).or_insert_with(|| key.clone());
        }
        for (key, f) in fields {
            by_name.insert(normalize(&f.label), key.clone());
        }
        let mut columns = Vec::with_capacity(header.len());
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (i, h) in header.iter().enumerate() {
            let n = normalize(h);
            if !n.is_empty()
                && let Some(first) = seen.insert(n.clone(), i + 1)
            {
                return Err(HeaderError::Duplicate {
                    name: h.trim().to_owned(),
                    first,
                    second: i + 1,
                });
            }
            let col = match n.as_str() {
                "newusername" => Column::NewUsername,
                "password" => Column::Password,
                "accountstate" | "state" | "status" => Column::AccountState,
                "groups" | "group" => Column::Groups,
                _ => match by_name.get(&n) {
                    Some(key) if key == "username" => Column::Username,
                    Some(key) => Column::Field(key.clone()),
                    None if n == "username" => Column::Username,
                    None => Column::Unknown(h.trim().to_owned()),
                },
            };
            columns.push(col);
        }
        // Two columns mapping to one field (a label and its key) are as bad as a repeated name.
        let mut targets: BTreeMap<&Column, usize> = BTreeMap::new();
        for (i, c) in columns.iter().enumerate() {
            if matches!(c, Column::Unknown(_)) {
                continue;
            }
            if let Some(first) = targets.insert(c, i + 1) {
                return Err(HeaderError::Duplicate {
                    name: header[i].trim().to_owned(),
                    first,
                    second: i + 1,
                });
            }
        }
        let username = columns
            .iter()
            .position(|c| *c == Column::Username)
            .ok_or_else(|| {
                HeaderError::NoUsername(header.join(", ").chars().take(200).collect())
            })?;
        let fields = fields
            .iter()
            .filter(|(k, _)| columns.contains(&Column::Field((*k).clone())))
            .map(|(k, f)| (k.clone(), f.clone()))
            .collect();
        Ok(Self {
            columns,
            username,
            fields,
        })
    }

    pub fn unknown_columns(&self) -> Vec<&str> {
        self.columns
            .iter()
            .filter_map(|c| match c {
                Column::Unknown(name) => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Mandatory profile fields (other than the username) a new user needs.
    pub fn mandatory_keys(all: &ProfileFields) -> Vec<(String, String)> {
        all.iter()
            .filter(|(k, f)| f.mode == FieldMode::Mandatory && k.as_str() != "username")
            .map(|(k, f)| (k.clone(), f.label.clone()))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use crate::platform::model::{FieldKind, FieldMode, ProfileField, ProfileFields};

    pub(crate) fn fields() -> ProfileFields {
        let f = |label: &str, mode, kind, values: Option<&[&str]>| ProfileField {
            label: label.into(),
            mode,
            order: 0,
            kind,
            values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
        };
        ProfileFields::from([
            (
                "username".into(),
                f("Username", FieldMode::Mandatory, FieldKind::Text, None),
            ),
            (
                "forename".into(),
                f("First name", FieldMode::Mandatory, FieldKind::Text, None),
            ),
            (
                "surname".into(),
                f("Surname", FieldMode::Mandatory, FieldKind::Text, None),
            ),
            (
                "mail".into(),
                f("Email address", FieldMode::Optional, FieldKind::Text, None),
            ),
            (
                "department".into(),
                f(
                    "Department",
                    FieldMode::Mandatory,
                    FieldKind::SingleChoice,
                    Some(&["Sales", "HR"]),
                ),
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::fields;
    use super::*;

    fn header(cols: &[&str]) -> Vec<String> {
        cols.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn labels_and_keys_match_loosely() {
        let t = Template::from_header(
            &header(&[
                "\u{feff}USERNAME",
                " first  name ",
                "surname",
                "Email_Address",
                "Groups",
                "Account state",
                "Shoe size",
            ]),
            &fields(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.username, 0);
        assert_eq!(
            t.columns,
            vec![
                Column::Username,
                Column::Field("forename".into()),
                Column::Field("surname".into()),
                Column::Field("mail".into()),
                Column::Groups,
                Column::AccountState,
                Column::Unknown("Shoe size".into()),
            ]
        );
        assert_eq!(t.unknown_columns(), vec!["Shoe size"]);
    }

    #[test]
    fn header_problems_are_file_errors() {
        assert_eq!(
            Template::from_header(&header(&[""]), &fields()).err(),
            Some(HeaderError::Empty)
        );
        assert!(matches!(
            Template::from_header(&header(&["First name", "Surname"]), &fields()),
            Err(HeaderError::NoUsername(_))
        ));
        assert!(matches!(
            Template::from_header(&header(&["Username", "Surname", "surname"]), &fields()),
            Err(HeaderError::Duplicate {
                first: 2,
                second: 3,
                ..
            })
        ));
        assert!(matches!(
            Template::from_header(&header(&["Username", "forename", "First name"]), &fields()),
            Err(HeaderError::Duplicate { .. })
        ));
    }
}
