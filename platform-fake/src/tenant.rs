//! One tenant's users, groups and profile fields, and the user operations of the API applied to
//! them. Everything here is synchronous and clock-free: the caller turns an [`Outcome`] into a
//! tid whose status turns final later.

use std::collections::{BTreeMap, BTreeSet};

use crate::command::{
    CreateUser, GroupChange, MAX_SET_USERS, Outcome, Rejection, SetUser, SetUsers, UpdateUser,
};
use crate::model::{
    ACTIVATED, CallCounts, DEACTIVATED, FakeUser, ProfileField, seed_profile_fields,
};
use crate::validate::{Check, profile_errors};

/// A tenant of the fake platform.
#[derive(Debug)]
pub(crate) struct Tenant {
    pub api_key: String,
    pub fields: BTreeMap<String, ProfileField>,
    pub users: BTreeMap<String, FakeUser>,
    /// Every group that exists on the tenant (created on first use, never deleted).
    pub groups: BTreeSet<String>,
    pub calls: CallCounts,
    /// When each authenticated write request (`SetUser`, `SetUsers`, `DeleteUser`) arrived, in
    /// order: the write log trials read overlaps from. Kept apart from `calls`, which is cloned
    /// whenever it is read.
    pub write_log: Vec<std::time::SystemTime>,
}

impl Tenant {
    pub(crate) fn new(api_key: &str) -> Self {
        Self {
            api_key: api_key.to_owned(),
            fields: seed_profile_fields(),
            users: BTreeMap::new(),
            groups: BTreeSet::new(),
            calls: CallCounts::default(),
            write_log: Vec::new(),
        }
    }

    /// Seeds (or replaces) a user as is, without validation; its groups start to exist.
    pub(crate) fn insert_user(&mut self, mut user: FakeUser) {
        user.profile.remove("username");
        user.profile.retain(|_, v| !v.is_empty());
        self.groups.extend(user.groups.iter().cloned());
        self.users.insert(user.username.clone(), user);
    }

    /// `SetUser`: refuses synchronously (404/409) or applies the change now and returns the
    /// final outcome (a failed outcome changes nothing).
    pub(crate) fn set_user(&mut self, command: SetUser) -> Result<Outcome, Rejection> {
        match command {
            SetUser::Create(create) => self.create(create),
            SetUser::Update(update) => self.update(update),
            SetUser::Activate { uid } => self.set_state(&uid, ACTIVATED),
            SetUser::Deactivate { uid } => self.set_state(&uid, DEACTIVATED),
        }
    }

    fn create(&mut self, create: CreateUser) -> Result<Outcome, Rejection> {
        let username = match create.profile.get("username") {
            Some(name) if !name.is_empty() => name.clone(),
            _ => return Err(Rejection::BadRequest("profile.username is required".into())),
        };
        if self.users.contains_key(&username) {
            self.calls.create_conflicts += 1;
            return Err(Rejection::Conflict(format!(
                "user '{username}' already exists"
            )));
        }
        let check = Check::Create {
            override_mandatory: create.override_mandatory,
        };
        let mut problems = profile_errors(&self.fields, &create.profile, check);
        problems.extend(password_error(create.password.as_deref()));
        if !problems.is_empty() {
            return Ok(Outcome::failed(&username, &problems));
        }
        let mut profile = create.profile;
        profile.remove("username");
        profile.retain(|_, v| !v.is_empty());
        let user = FakeUser {
            username: username.clone(),
            profile,
            groups: create.groups.iter().cloned().collect(),
            state: ACTIVATED.to_owned(),
            password_set: create.password.is_some(),
            auth_mode: create.auth_mode,
        };
        self.insert_user(user);
        *self.calls.creates.entry(username.clone()).or_insert(0) += 1;
        Ok(Outcome::success(format!("user '{username}' created")))
    }

    fn update(&mut self, update: UpdateUser) -> Result<Outcome, Rejection> {
        let uid = update.uid;
        let Some(current) = self.users.get(&uid) else {
            return Err(Rejection::NotFound(format!("no such user '{uid}'")));
        };
        let check = Check::Update {
            override_mandatory: update.override_mandatory,
        };
        let mut problems = profile_errors(&self.fields, &update.profile, check);
        problems.extend(password_error(update.password.as_deref()));
        let new_name = update
            .profile
            .get("username")
            .filter(|name| !name.is_empty() && **name != uid)
            .cloned();
        if let Some(name) = &new_name
            && self.users.contains_key(name)
        {
            problems.push(format!("cannot rename to '{name}': the username is taken"));
        }
        if !problems.is_empty() {
            return Ok(Outcome::failed(&uid, &problems));
        }

        let mut user = current.clone();
        for (key, value) in update.profile {
            if key == "username" {
                continue;
            }
            if value.is_empty() {
                user.profile.remove(&key);
            } else {
                user.profile.insert(key, value);
            }
        }
        for change in update.groups {
            match change {
                GroupChange::Add(group) => {
                    user.groups.insert(group);
                }
                GroupChange::Remove(group) => {
                    user.groups.remove(&group);
                }
            }
        }
        if update.password.is_some() {
            user.password_set = true;
        }
        let message = match new_name {
            Some(name) => {
                self.users.remove(&uid);
                user.username = name.clone();
                format!("user '{uid}' updated and renamed to '{name}'")
            }
            None => format!("user '{uid}' updated"),
        };
        self.insert_user(user);
        Ok(Outcome::success(message))
    }

    fn set_state(&mut self, uid: &str, state: &str) -> Result<Outcome, Rejection> {
        let user = self
            .users
            .get_mut(uid)
            .ok_or_else(|| Rejection::NotFound(format!("no such user '{uid}'")))?;
        user.state = state.to_owned();
        Ok(Outcome::success(format!(
            "user '{uid}' {}",
            state.to_lowercase()
        )))
    }

    /// `SetUsers`: 400 beyond [`MAX_SET_USERS`] uids or with none; otherwise every known uid
    /// changes state now and every unknown one is listed in `errors`. The outcome fails only
    /// when no uid could be changed.
    pub(crate) fn set_users(&mut self, command: SetUsers) -> Result<Outcome, Rejection> {
        if command.uids.is_empty() {
            return Err(Rejection::BadRequest(
                "params.uids must not be empty".into(),
            ));
        }
        if command.uids.len() > MAX_SET_USERS {
            return Err(Rejection::BadRequest(format!(
                "params.uids has {} entries, at most {MAX_SET_USERS} are allowed",
                command.uids.len()
            )));
        }
        let state = if command.activate {
            ACTIVATED
        } else {
            DEACTIVATED
        };
        let mut errors = BTreeMap::new();
        let mut changed = 0usize;
        for uid in &command.uids {
            match self.users.get_mut(uid) {
                Some(user) => {
                    user.state = state.to_owned();
                    changed += 1;
                }
                None => {
                    errors.insert(uid.clone(), format!("no such user '{uid}'"));
                }
            }
        }
        let verb = state.to_lowercase();
        Ok(Outcome {
            success: changed > 0,
            message: if errors.is_empty() {
                format!("{changed} users {verb}")
            } else {
                format!("{changed} users {verb}, {} failed", errors.len())
            },
            errors,
        })
    }

    /// `DeleteUser`: removes the user for good (its groups stay).
    pub(crate) fn delete_user(&mut self, uid: &str) -> Result<(), Rejection> {
        self.users
            .remove(uid)
            .map(|_| ())
            .ok_or_else(|| Rejection::NotFound(format!("no such user '{uid}'")))
    }
}

fn password_error(password: Option<&str>) -> Option<String> {
    (password == Some("")).then(|| "password must not be empty".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn create(username: &str) -> CreateUser {
        CreateUser {
            profile: profile(&[
                ("username", username),
                ("forename", "Ada"),
                ("surname", "Lovelace"),
                ("department", "Engineering"),
                ("mail", "ada@example.com"),
            ]),
            groups: vec!["Staff".into()],
            ..CreateUser::default()
        }
    }

    fn update(uid: &str, pairs: &[(&str, &str)]) -> UpdateUser {
        UpdateUser {
            uid: uid.into(),
            profile: profile(pairs),
            ..UpdateUser::default()
        }
    }

    fn tenant_with(usernames: &[&str]) -> Tenant {
        let mut tenant = Tenant::new("key");
        for name in usernames {
            let outcome = tenant.set_user(SetUser::Create(create(name)));
            assert_eq!(outcome.map(|o| o.success), Ok(true));
        }
        tenant
    }

    #[test]
    fn a_create_stores_an_activated_user_and_its_new_groups() {
        let tenant = tenant_with(&["ada"]);
        let user = &tenant.users["ada"];
        assert_eq!(user.state, ACTIVATED);
        assert_eq!(user.profile["forename"], "Ada");
        assert!(!user.profile.contains_key("username"));
        assert!(user.groups.contains("Staff"));
        assert!(tenant.groups.contains("Staff"));
    }

    #[test]
    fn creating_an_existing_user_is_a_conflict() {
        let mut tenant = tenant_with(&["ada"]);
        let again = tenant.set_user(SetUser::Create(create("ada")));
        assert!(matches!(again, Err(Rejection::Conflict(_))));
        assert_eq!(tenant.calls.create_conflicts, 1);
        assert_eq!(
            tenant.calls.duplicate_creates(),
            0,
            "a seeded user is not a create"
        );
    }

    #[test]
    fn creates_are_counted_per_username() {
        let mut tenant = tenant_with(&[]);
        assert!(tenant.set_user(SetUser::Create(create("ada"))).is_ok());
        assert!(tenant.delete_user("ada").is_ok());
        assert!(tenant.set_user(SetUser::Create(create("ada"))).is_ok());
        assert!(tenant.set_user(SetUser::Create(create("bob"))).is_ok());
        assert_eq!(tenant.calls.creates.get("ada"), Some(&2));
        assert_eq!(tenant.calls.creates.get("bob"), Some(&1));
        assert_eq!(tenant.calls.duplicate_creates(), 1);
    }

    #[test]
    fn a_create_without_username_is_a_bad_request() {
        let mut tenant = Tenant::new("key");
        let mut c = create("ada");
        c.profile.remove("username");
        assert!(matches!(
            tenant.set_user(SetUser::Create(c)),
            Err(Rejection::BadRequest(_))
        ));
    }

    #[test]
    fn an_invalid_create_fails_for_its_uid_and_stores_nothing() {
        let mut tenant = Tenant::new("key");
        let mut c = create("ada");
        c.profile.insert("department".into(), "Marketing".into());
        let outcome = tenant.set_user(SetUser::Create(c));
        let Ok(outcome) = outcome else {
            panic!("expected an outcome, got {outcome:?}")
        };
        assert!(!outcome.success);
        assert!(outcome.errors["ada"].contains("Marketing"));
        assert!(tenant.users.is_empty());
        assert!(tenant.groups.is_empty());
    }

    #[test]
    fn an_update_merges_given_keys_and_clears_empty_ones() {
        let mut tenant = tenant_with(&["ada"]);
        let outcome = tenant.set_user(SetUser::Update(update(
            "ada",
            &[("surname", "King"), ("mail", ""), ("employee_id", "E1")],
        )));
        assert_eq!(outcome.map(|o| o.success), Ok(true));
        let user = &tenant.users["ada"];
        assert_eq!(user.profile["surname"], "King");
        assert_eq!(user.profile["forename"], "Ada");
        assert_eq!(user.profile["employee_id"], "E1");
        assert!(!user.profile.contains_key("mail"));
    }

    #[test]
    fn an_update_adds_and_removes_groups() {
        let mut tenant = tenant_with(&["ada"]);
        let mut u = update("ada", &[]);
        u.groups = vec![
            GroupChange::Add("Math".into()),
            GroupChange::Remove("Staff".into()),
            GroupChange::Remove("Never".into()),
        ];
        assert_eq!(
            tenant.set_user(SetUser::Update(u)).map(|o| o.success),
            Ok(true)
        );
        let groups: Vec<_> = tenant.users["ada"].groups.iter().cloned().collect();
        assert_eq!(groups, vec!["Math".to_owned()]);
        assert!(tenant.groups.contains("Math") && tenant.groups.contains("Staff"));
    }

    #[test]
    fn an_invalid_update_changes_nothing() {
        let mut tenant = tenant_with(&["ada"]);
        let before = tenant.users["ada"].clone();
        let outcome = tenant.set_user(SetUser::Update(update(
            "ada",
            &[("surname", "King"), ("start_date", "tomorrow")],
        )));
        let Ok(outcome) = outcome else {
            panic!("expected an outcome, got {outcome:?}")
        };
        assert!(!outcome.success);
        assert!(outcome.errors["ada"].contains("start_date"));
        assert_eq!(tenant.users["ada"], before);
    }

    #[test]
    fn updating_a_missing_user_is_not_found() {
        let mut tenant = Tenant::new("key");
        assert!(matches!(
            tenant.set_user(SetUser::Update(update("ghost", &[]))),
            Err(Rejection::NotFound(_))
        ));
    }

    #[test]
    fn a_different_username_renames_the_user() {
        let mut tenant = tenant_with(&["ada"]);
        let outcome = tenant.set_user(SetUser::Update(update("ada", &[("username", "ada.k")])));
        assert_eq!(outcome.map(|o| o.success), Ok(true));
        assert!(!tenant.users.contains_key("ada"));
        assert_eq!(tenant.users["ada.k"].username, "ada.k");
        assert_eq!(tenant.users["ada.k"].profile["forename"], "Ada");
    }

    #[test]
    fn renaming_to_a_taken_username_fails_for_that_uid() {
        let mut tenant = tenant_with(&["ada", "bob"]);
        let outcome = tenant.set_user(SetUser::Update(update("ada", &[("username", "bob")])));
        let Ok(outcome) = outcome else {
            panic!("expected an outcome, got {outcome:?}")
        };
        assert!(!outcome.success);
        assert!(outcome.errors["ada"].contains("taken"));
        assert!(tenant.users.contains_key("ada"));
        assert_eq!(tenant.users["bob"].profile["forename"], "Ada");
    }

    #[test]
    fn giving_the_same_username_is_not_a_rename() {
        let mut tenant = tenant_with(&["ada"]);
        let outcome = tenant.set_user(SetUser::Update(update("ada", &[("username", "ada")])));
        assert_eq!(outcome.map(|o| o.success), Ok(true));
        assert!(tenant.users.contains_key("ada"));
    }

    #[test]
    fn activate_and_deactivate_change_the_state() {
        let mut tenant = tenant_with(&["ada"]);
        let off = tenant.set_user(SetUser::Deactivate { uid: "ada".into() });
        assert_eq!(off.map(|o| o.success), Ok(true));
        assert_eq!(tenant.users["ada"].state, DEACTIVATED);
        let on = tenant.set_user(SetUser::Activate { uid: "ada".into() });
        assert_eq!(on.map(|o| o.success), Ok(true));
        assert_eq!(tenant.users["ada"].state, ACTIVATED);
        assert!(matches!(
            tenant.set_user(SetUser::Activate {
                uid: "ghost".into()
            }),
            Err(Rejection::NotFound(_))
        ));
    }

    #[test]
    fn set_users_refuses_more_than_500_uids() {
        let mut tenant = tenant_with(&["ada"]);
        let uids = (0..=MAX_SET_USERS).map(|i| format!("u{i}")).collect();
        let refused = tenant.set_users(SetUsers {
            activate: false,
            uids,
        });
        assert!(matches!(refused, Err(Rejection::BadRequest(_))));
        assert_eq!(tenant.users["ada"].state, ACTIVATED);
    }

    #[test]
    fn set_users_accepts_exactly_500_uids() {
        let mut tenant = tenant_with(&["ada"]);
        let mut uids: Vec<String> = (1..MAX_SET_USERS).map(|i| format!("u{i}")).collect();
        uids.push("ada".into());
        let outcome = tenant.set_users(SetUsers {
            activate: false,
            uids,
        });
        let Ok(outcome) = outcome else {
            panic!("expected an outcome, got {outcome:?}")
        };
        assert!(outcome.success);
        assert_eq!(outcome.errors.len(), MAX_SET_USERS - 1);
    }

    #[test]
    fn set_users_lists_unknown_uids_and_fails_only_when_none_succeeded() {
        let mut tenant = tenant_with(&["ada", "bob"]);
        let some = tenant.set_users(SetUsers {
            activate: false,
            uids: vec!["ada".into(), "ghost".into()],
        });
        let Ok(some) = some else {
            panic!("expected an outcome, got {some:?}")
        };
        assert!(some.success);
        assert_eq!(some.errors.keys().collect::<Vec<_>>(), vec!["ghost"]);
        assert_eq!(tenant.users["ada"].state, DEACTIVATED);
        assert_eq!(tenant.users["bob"].state, ACTIVATED);

        let none = tenant.set_users(SetUsers {
            activate: true,
            uids: vec!["ghost".into(), "phantom".into()],
        });
        assert_eq!(none.map(|o| (o.success, o.errors.len())), Ok((false, 2)));
    }

    #[test]
    fn delete_removes_the_user_and_a_second_delete_is_not_found() {
        let mut tenant = tenant_with(&["ada"]);
        assert_eq!(tenant.delete_user("ada"), Ok(()));
        assert!(tenant.users.is_empty());
        assert!(matches!(
            tenant.delete_user("ada"),
            Err(Rejection::NotFound(_))
        ));
    }
}
