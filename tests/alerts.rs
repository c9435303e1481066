//! The Prometheus alert rules (`deploy/prometheus/alerts.yml`) are valid and behave as their
//! unit tests say (`deploy/prometheus/alerts.test.yml`), checked with `promtool`, which
//! `scripts/install-deps` installs (Debian's `prometheus` package).

use std::process::Command;

fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is needed ({e}): run scripts/install-deps, or \
                 `apt-get install --no-install-recommends prometheus`"
            )
        })
}

#[test]
fn alert_rules_are_valid_and_fire_when_their_tests_say() {
    let check = promtool(&["check", "rules", "alerts.yml"]);
    let text = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 22 rules found"), "{text}");
    let test = promtool(&["test", "rules", "alerts.test.yml"]);
    let text =
        String::from_utf8_lossy(&test.stdout).to_string() + &String::from_utf8_lossy(&test.stderr);
    assert!(test.status.success(), "{text}");
}
