//! Validation of profile values against a tenant's profile fields: the checks the platform runs
//! asynchronously after answering 202, whose failures show up in `/status/<tid>`.

use std::collections::BTreeMap;

use crate::model::{FieldMode, FieldType, ProfileField};

/// Whether the profile comes with a create (every mandatory field must be there) or an update
/// (only the fields given are checked; clearing a mandatory field is an error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    Create { override_mandatory: bool },
    Update { override_mandatory: bool },
}

/// Every problem with `profile` (keys and values as sent, `username` included), in key order.
/// An empty result means the profile is valid.
pub(crate) fn profile_errors(
    fields: &BTreeMap<String, ProfileField>,
    profile: &BTreeMap<String, String>,
    check: Check,
) -> Vec<String> {
    let mut errors = Vec::new();
    for (key, value) in profile {
        let Some(field) = fields.get(key) else {
            errors.push(format!("unknown profile field '{key}'"));
            continue;
        };
        if value.is_empty() {
            if let Check::Update { override_mandatory } = check
                && (key == "username"
                    || (field.mode == FieldMode::Mandatory && !override_mandatory))
            {
                errors.push(format!("mandatory field '{key}' cannot be cleared"));
            }
            continue;
        }
        if let Some(problem) = value_error(field, value) {
            errors.push(format!("field '{key}': {problem}"));
        }
    }
    if let Check::Create { override_mandatory } = check {
        for (key, field) in fields {
            let given = profile.get(key).is_some_and(|v| !v.is_empty());
            // The username is the user's key: it can never be left out, override or not.
            let required =
                key == "username" || (field.mode == FieldMode::Mandatory && !override_mandatory);
            if required && !given {
                errors.push(format!("mandatory field '{key}' is missing"));
            }
        }
    }
    errors
}

/// What is wrong with a non-empty `value` for `field`, if anything.
fn value_error(field: &ProfileField, value: &str) -> Option<String> {
    let allowed = field.values.as_deref().unwrap_or_default();
    match field.kind {
        FieldType::Text | FieldType::Ou => None,
        FieldType::Date => {
            (!is_date(value)).then(|| format!("'{value}' is not a valid date (YYYY-MM-DD)"))
        }
        FieldType::SingleChoice => (!allowed.iter().any(|a| a == value))
            .then(|| format!("'{value}' is not one of {}", allowed.join(", "))),
        FieldType::MultipleChoice => value
            .split(',')
            .map(str::trim)
            .find(|v| !allowed.iter().any(|a| a == v))
            .map(|v| format!("'{v}' is not one of {}", allowed.join(", "))),
    }
}

/// Whether `s` is a real calendar date written `YYYY-MM-DD`.
pub(crate) fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let (Some(year), Some(month), Some(day)) = (digits(0..4), digits(5..7), digits(8..10)) else {
        return false;
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days_in_month).contains(&day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::seed_profile_fields;

    fn profile(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn complete() -> BTreeMap<String, String> {
        profile(&[
            ("username", "ada"),
            ("forename", "Ada"),
            ("surname", "Lovelace"),
            ("department", "Engineering"),
        ])
    }

    const CREATE: Check = Check::Create {
        override_mandatory: false,
    };
    const UPDATE: Check = Check::Update {
        override_mandatory: false,
    };

    #[test]
    fn a_complete_profile_is_valid() {
        assert!(profile_errors(&seed_profile_fields(), &complete(), CREATE).is_empty());
    }

    #[test]
    fn a_missing_mandatory_field_fails_a_create_unless_overridden() {
        let mut p = complete();
        p.remove("department");
        let errors = profile_errors(&seed_profile_fields(), &p, CREATE);
        assert_eq!(errors, vec!["mandatory field 'department' is missing"]);
        let overridden = Check::Create {
            override_mandatory: true,
        };
        assert!(profile_errors(&seed_profile_fields(), &p, overridden).is_empty());
    }

    #[test]
    fn an_empty_value_on_create_counts_as_missing() {
        let mut p = complete();
        p.insert("forename".into(), String::new());
        let errors = profile_errors(&seed_profile_fields(), &p, CREATE);
        assert_eq!(errors, vec!["mandatory field 'forename' is missing"]);
    }

    #[test]
    fn an_update_does_not_recheck_absent_mandatory_fields() {
        let p = profile(&[("mail", "ada@example.com")]);
        assert!(profile_errors(&seed_profile_fields(), &p, UPDATE).is_empty());
    }

    #[test]
    fn an_update_cannot_clear_a_mandatory_field_unless_overridden() {
        let p = profile(&[("surname", ""), ("mail", "")]);
        let errors = profile_errors(&seed_profile_fields(), &p, UPDATE);
        assert_eq!(errors, vec!["mandatory field 'surname' cannot be cleared"]);
        let overridden = Check::Update {
            override_mandatory: true,
        };
        assert!(profile_errors(&seed_profile_fields(), &p, overridden).is_empty());
    }

    #[test]
    fn unknown_keys_bad_choices_and_bad_dates_are_reported() {
        let mut p = complete();
        p.insert("shoe_size".into(), "42".into());
        p.insert("department".into(), "Marketing".into());
        p.insert("start_date".into(), "2024-02-30".into());
        let errors = profile_errors(&seed_profile_fields(), &p, CREATE);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("department") && errors[0].contains("Marketing"));
        assert!(errors[1].contains("shoe_size"));
        assert!(errors[2].contains("start_date"));
    }

    #[test]
    fn dates_are_checked_against_the_calendar() {
        for good in ["2024-02-29", "2023-12-31", "2000-02-29", "1999-01-01"] {
            assert!(is_date(good), "{good}");
        }
        for bad in [
            "2023-02-29",
            "1900-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-04-31",
            "2024-4-01",
            "24-04-01",
            "2024/04/01",
            "2024-04-01T00:00",
            "+024-04-01",
            "",
        ] {
            assert!(!is_date(bad), "{bad}");
        }
    }
}
