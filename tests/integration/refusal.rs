//! A refusal is told once: an account whose `/tmp` refuses writes fails one run with
//! `account-refused`, the admin gets one refusal email, and the same file is not run again at the
//! next tick.

use std::os::unix::fs::PermissionsExt;

use worker::JobError;
use worker::outcome::Permanent;

use harness::tenant_env::TenantEnv;

fn refusal_subjects(mails: &[harness::ReceivedMail]) -> usize {
    mails
        .iter()
        .filter(|m| m.subject.contains("User import REFUSED"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tmp_that_refuses_writes_fails_one_run_with_one_email_and_the_file_is_not_run_again() {
    let env = TenantEnv::new().await;
    env.upload("Username,First name,Last name,Email\nann,Ann,Lee,ann@example.org\n");
    let tmp = env.account.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o555))
        .unwrap_or_else(|e| panic!("{e}"));

    let first = env.run().await;
    assert!(
        matches!(
            &first,
            Err(JobError::Permanent(Permanent::AccountRefused(_)))
        ),
        "{first:?}"
    );
    assert!(
        env.log().contains("the fleet remembers it"),
        "{}",
        env.log()
    );
    // The report email of the run, then one refusal email.
    let mails = env.mails(2).await;
    assert_eq!(refusal_subjects(&mails), 1, "{mails:#?}");
    let refusal = mails
        .iter()
        .find(|m| m.subject.contains("REFUSED"))
        .unwrap_or_else(|| panic!("a refusal"));
    assert!(
        refusal.body_text.contains("refused a write"),
        "{}",
        refusal.body_text
    );

    // The next tick: the same file is skipped, nothing more is sent.
    let calls_before = env.fake.calls(&env.domain).total();
    let second = env.run().await;
    assert!(
        matches!(&second, Ok(worker::Outcome::AlreadyProcessed { .. })),
        "{second:?}"
    );
    assert!(env.log().contains("was refused before"), "{}", env.log());
    assert_eq!(
        env.fake.calls(&env.domain).total(),
        calls_before,
        "no API call"
    );
    let all = harness::smtp().await.all_messages();
    let to_admin: Vec<_> = all
        .into_iter()
        .filter(|m| m.envelope_to.iter().any(|t| t == &env.admin_email))
        .collect();
    assert_eq!(to_admin.len(), 2, "no new email: {to_admin:#?}");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
}
