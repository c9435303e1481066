//! docker-compose.yml is not run in CI (no Docker engine here). These tests parse it and check
//! what would break a real `docker compose up`: the services docs/production.md promises, the
//! workers' stop timeout against their drain, their health checks, the `sim` profile's wiring
//! of the simulator to the workers and the receipts ingress, Prometheus's targets, and every
//! worker command, run through the `otp` binary (`otp worker <channel> ARGS --print-config`,
//! the same program as the worker binaries: it parses every flag and setting, prints the
//! effective configuration and exits without connecting to anything).

use serde_yaml::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const WORKER_BINARIES: [&str; 2] = ["otp-whatsapp-worker", "otp-sms-worker"];

#[test]
fn compose_file_is_valid_yaml_with_the_promised_services() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
        .unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
    let services = doc["services"].as_mapping().expect("a services map");
    for name in ["kafka", "topics", "ingress", "receipts", "tracker"] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    let kafka_env = format!("{:?}", doc["services"]["kafka"]["environment"]);
    assert!(
        kafka_env.contains("KAFKA_PROCESS_ROLES"),
        "kafka runs in KRaft mode"
    );
    let ingress = &doc["services"]["ingress"];
    assert!(
        format!("{:?}", ingress["environment"]).contains("OTP_INGRESS_API_KEYS"),
        "the ingress is started with its API keys"
    );
    for port in ingress["ports"].as_sequence().expect("ingress ports") {
        assert!(
            port.as_str().is_some_and(|p| p.starts_with("127.0.0.1:")),
            "the ingress is published on loopback only: {port:?}"
        );
    }
    let topics_cmd = format!("{:?}", doc["services"]["topics"]["command"]);
    assert!(
        topics_cmd.contains("topics") && topics_cmd.contains("create"),
        "{topics_cmd}"
    );
}

#[test]
fn every_worker_drains_before_it_is_killed_and_has_a_readiness_healthcheck() {
    let doc = compose();
    let drain = drain_bound();
    // (binary, in the sim profile) → services
    let mut seen: BTreeMap<(&str, bool), usize> = BTreeMap::new();
    for (name, service) in services(&doc) {
        let name = name.as_str().expect("service names are strings");
        let cmd = command(service);
        let Some(binary) = worker_binary(&cmd) else {
            continue;
        };
        *seen
            .entry((binary, in_profile(service, "sim")))
            .or_default() += 1;

        let stop = stop_grace_period(name, service);
        assert!(
            stop > drain,
            "{name}: stop_grace_period {stop:?} must be above the worker's shutdown grace plus \
             the final commit's bound ({drain:?}), or the drain is killed"
        );

        let listen = flag(&cmd, "--metrics-listen")
            .unwrap_or_else(|| panic!("{name}: no --metrics-listen, so no /readyz to check"));
        let port = port_of(listen);
        let healthcheck = &service["healthcheck"];
        assert_ne!(
            healthcheck["disable"].as_bool(),
            Some(true),
            "{name}: healthcheck disabled"
        );
        let test = healthcheck["test"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name}: no healthcheck test"))
            .iter()
            .map(|v| v.as_str().expect("healthcheck test items are strings"))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            test.contains("/readyz") && test.contains(&port.to_string()),
            "{name}: the healthcheck must ask /readyz on the --metrics-listen port {port}: {test}"
        );
    }
    for binary in WORKER_BINARIES {
        assert!(
            seen.contains_key(&(binary, false)),
            "no {binary} service for the real providers: {seen:?}"
        );
        assert!(
            seen.contains_key(&(binary, true)),
            "no {binary} service in the sim profile: {seen:?}"
        );
    }
}

#[test]
fn every_worker_command_is_one_the_binaries_accept() {
    let doc = compose();
    let mut checked = 0;
    for (name, service) in services(&doc) {
        let name = name.as_str().expect("service names are strings");
        let cmd = command(service);
        if worker_binary(&cmd).is_none() {
            continue;
        }
        let printed = print_config(name, service);
        // The effective grace of this very command (a --config file could change it).
        let grace = printed_duration(&printed, "shutdown_grace");
        let stop = stop_grace_period(name, service);
        assert!(
            stop > grace + otp_kafka::group::CLOSE_WITHIN,
            "{name}: stop_grace_period {stop:?} is not above its shutdown_grace {grace:?} + \
             {:?}",
            otp_kafka::group::CLOSE_WITHIN
        );
        let listen =
            flag(&cmd, "--metrics-listen").unwrap_or_else(|| panic!("{name}: no --metrics-listen"));
        assert!(
            printed.contains(&format!("metrics_listen = \"{listen}\"")),
            "{name}: --metrics-listen {listen} did not reach the settings:\n{printed}"
        );
        checked += 1;
    }
    assert!(
        checked >= 4,
        "expected both workers for the providers and both in the sim profile, checked {checked}"
    );
}

/// Every service that runs one of our programs (workers, ingresses, tracker, topic creation,
/// simulator) is run here with its compose command and environment plus `--check-config`,
/// through `otp` (which carries every program as a subcommand): each must be accepted.
#[test]
fn every_service_command_is_one_its_program_accepts() {
    let doc = compose();
    let mut checked = Vec::new();
    for (name, service) in services(&doc) {
        let name = name.as_str().expect("service names are strings");
        let cmd = command(service);
        let Some(program) = cmd.first() else {
            continue;
        };
        // Each program, as an `otp` subcommand.
        let route: &[&str] = match program.as_str() {
            "otp" => &[],
            "otp-whatsapp-worker" => &["worker", "whatsapp"],
            "otp-sms-worker" => &["worker", "sms"],
            "otp-producer" => &["producer"],
            "otp-receipts" => &["receipts"],
            "otp-provider-sim" => &["sim"],
            _ => continue, // not ours (kafka, prometheus, grafana)
        };
        let out = run_as_composed(name, service, route, "--check-config");
        assert!(
            out.contains("configuration ok"),
            "{name}: the settings were not checked"
        );
        checked.push(name.to_string());
    }
    for expected in ["topics", "ingress", "receipts", "tracker"] {
        assert!(
            checked.iter().any(|c| c == expected),
            "{expected} not checked: {checked:?}"
        );
    }
    assert!(checked.len() >= 9, "every program's service: {checked:?}");
}

#[test]
fn the_sim_profile_wires_the_simulator_to_the_workers_and_the_receipts_ingress() {
    let doc = compose();
    let services = services(&doc);
    let (sim_name, sim) = services
        .iter()
        .find(|(_, s)| command(s).first().map(String::as_str) == Some("otp-provider-sim"))
        .expect("a service runs otp-provider-sim");
    let sim_name = sim_name.as_str().expect("service names are strings");
    assert!(
        in_profile(sim, "sim"),
        "{sim_name} must be in the sim profile only: {:?}",
        sim["profiles"]
    );
    let sim_cmd = command(sim);
    let sim_port = port_of(flag(&sim_cmd, "--listen").expect("the simulator's --listen"));
    let sim_url = format!("http://{sim_name}:{sim_port}");
    // What the simulator accepts and signs with: its flags, else its defaults.
    let defaults = otp_provider_sim::SimConfig::default();
    let sim_setting =
        |name: &str, default: &str| flag(&sim_cmd, name).unwrap_or(default).to_string();
    let whatsapp_token = sim_setting("--whatsapp-token", &defaults.whatsapp_token);
    let sms_account_sid = sim_setting("--sms-account-sid", &defaults.sms_account_sid);
    let sms_auth_token = sim_setting("--sms-auth-token", &defaults.sms_auth_token);
    let app_secret = sim_setting("--whatsapp-app-secret", &defaults.whatsapp_app_secret);

    // WhatsApp webhooks go to a receipts ingress of the same profile, which checks them with
    // the simulator's secrets and knows the URL the simulator calls.
    let webhook = flag(&sim_cmd, "--whatsapp-webhook-url")
        .expect("the simulator posts WhatsApp webhooks (--whatsapp-webhook-url)");
    let (host, port, path) = split_url(webhook);
    assert_eq!(path, "/webhooks/whatsapp", "{webhook}");
    let receipts = services
        .get(host.as_str())
        .unwrap_or_else(|| panic!("the webhook URL {webhook} names no service"));
    let receipts_cmd = command(receipts);
    assert_eq!(
        receipts_cmd.get(..2),
        Some(&["otp-receipts".to_string(), "serve".to_string()][..]),
        "{host} must be the receipts ingress"
    );
    assert!(
        in_profile(receipts, "sim"),
        "{host} must run with the sim profile"
    );
    assert_eq!(
        port_of(flag(&receipts_cmd, "--listen").expect("--listen")),
        port,
        "{host} listens elsewhere than {webhook}"
    );
    let public_url = format!("http://{host}:{port}");
    assert_eq!(
        env_value(receipts, "OTP_RECEIPTS_PUBLIC_URL").as_deref(),
        Some(public_url.as_str()),
        "{host}: Twilio-style signatures are over the URL the simulator calls"
    );
    assert_eq!(
        env_value(receipts, "OTP_WHATSAPP_APP_SECRET").as_deref(),
        Some(app_secret.as_str()),
        "{host} must check WhatsApp webhooks with the simulator's app secret"
    );
    assert_eq!(
        env_value(receipts, "OTP_SMS_AUTH_TOKEN").as_deref(),
        Some(sms_auth_token.as_str()),
        "{host} must check SMS callbacks with the simulator's auth token"
    );
    let callback = format!("{public_url}{}", otp_receipts::config::SMS_STATUS_PATH);

    let tracker_runs = services.values().any(|s| {
        command(s).get(..2) == Some(&["otp-receipts".to_string(), "track".to_string()][..])
            && (s["profiles"].is_null() || in_profile(s, "sim"))
    });
    let mut wired = BTreeSet::new();
    for (name, service) in services {
        let name = name.as_str().expect("service names are strings");
        let cmd = command(service);
        let Some(binary) = worker_binary(&cmd) else {
            continue;
        };
        if !in_profile(service, "sim") {
            continue;
        }
        let env = |var: &str| env_value(service, var);
        match binary {
            "otp-whatsapp-worker" => {
                assert_eq!(
                    env("OTP_WHATSAPP_API_BASE_URL"),
                    Some(sim_url.clone()),
                    "{name}"
                );
                assert_eq!(
                    env("OTP_WHATSAPP_TOKEN"),
                    Some(whatsapp_token.clone()),
                    "{name}"
                );
                assert!(
                    env("OTP_WHATSAPP_PHONE_NUMBER_ID").is_some(),
                    "{name}: a phone number id"
                );
            }
            _ => {
                assert_eq!(env("OTP_SMS_API_BASE_URL"), Some(sim_url.clone()), "{name}");
                assert_eq!(
                    env("OTP_SMS_AUTH_TOKEN"),
                    Some(sms_auth_token.clone()),
                    "{name}"
                );
                assert_eq!(
                    env("OTP_SMS_ACCOUNT_SID"),
                    Some(sms_account_sid.clone()),
                    "{name}"
                );
                assert_eq!(
                    env("OTP_SMS_STATUS_CALLBACK_URL"),
                    Some(callback.clone()),
                    "{name}: SMS status callbacks must reach {host}"
                );
            }
        }
        if flag(&cmd, "--confirm-window").is_some() {
            assert!(
                tracker_runs,
                "{name} confirms by receipt, but no confirmation tracker runs with the sim profile"
            );
        }
        let depends = format!("{:?}", service["depends_on"]);
        assert!(
            depends.contains(sim_name),
            "{name} must start after {sim_name}: {depends}"
        );
        wired.insert(binary);
    }
    assert_eq!(
        wired,
        BTreeSet::from(WORKER_BINARIES),
        "both workers must run in the sim profile"
    );
}

#[test]
fn prometheus_scrapes_every_metrics_listener_and_grafana_gets_its_dashboards() {
    let doc = compose();
    let prometheus = yaml_file("deploy/prometheus/prometheus.yml");
    let mut targets: BTreeSet<(String, u16)> = BTreeSet::new();
    for job in prometheus["scrape_configs"]
        .as_sequence()
        .expect("prometheus.yml has scrape_configs")
    {
        for sd in job["dns_sd_configs"].as_sequence().into_iter().flatten() {
            let port = sd["port"].as_u64().expect("a dns_sd_configs port") as u16;
            for name in sd["names"].as_sequence().expect("dns_sd_configs names") {
                targets.insert((name.as_str().expect("a name").to_string(), port));
            }
        }
        for sc in job["static_configs"].as_sequence().into_iter().flatten() {
            for target in sc["targets"].as_sequence().expect("static targets") {
                let target = target.as_str().expect("a target");
                let (host, port) = target.rsplit_once(':').expect("host:port");
                targets.insert((host.to_string(), port.parse().expect("a port")));
            }
        }
    }
    let mut scraped = 0;
    for (name, service) in services(&doc) {
        let name = name.as_str().expect("service names are strings");
        if let Some(listen) = flag(&command(service), "--metrics-listen") {
            let want = (name.to_string(), port_of(listen));
            assert!(
                targets.contains(&want),
                "Prometheus does not scrape {name}:{} ({targets:?})",
                want.1
            );
            scraped += 1;
        }
    }
    assert!(scraped >= 6, "only {scraped} services serve /metrics");

    let mounts = |service: &str| format!("{:?}", doc["services"][service]["volumes"]);
    assert!(
        mounts("prometheus").contains("./deploy/prometheus:/etc/prometheus"),
        "Prometheus must get deploy/prometheus (prometheus.yml and alerts.yml): {}",
        mounts("prometheus")
    );
    let providers = yaml_file("deploy/grafana/provisioning/dashboards/otp-pipeline.yml");
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .expect("the dashboard provider's options.path");
    assert!(
        mounts("grafana").contains(&format!("./deploy/grafana/dashboards:{path}")),
        "Grafana's dashboard provider reads {path}, where compose must mount \
         deploy/grafana/dashboards: {}",
        mounts("grafana")
    );
    assert!(
        mounts("grafana").contains("./deploy/grafana/provisioning:/etc/grafana/provisioning"),
        "{}",
        mounts("grafana")
    );
}

// --- helpers ---------------------------------------------------------------------------------

/// The compose file with its `<<` merge keys applied (nested ones too: a worker merges
/// `x-worker`, which merges `x-otp-image`).
fn compose() -> Value {
    let mut doc = yaml_file("docker-compose.yml");
    for _ in 0..4 {
        doc.apply_merge().expect("the merge keys resolve");
    }
    doc
}

fn yaml_file(path: &str) -> Value {
    let text = std::fs::read_to_string(format!("{ROOT}/{path}"))
        .unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"))
}

fn services(doc: &Value) -> &Mapping {
    doc["services"].as_mapping().expect("a services map")
}

fn command(service: &Value) -> Vec<String> {
    service["command"]
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .map(|v| v.as_str().expect("command items are strings").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The worker binary a command runs, if it runs one.
fn worker_binary(command: &[String]) -> Option<&'static str> {
    let first = command.first()?;
    WORKER_BINARIES.into_iter().find(|b| first == b)
}

fn flag<'a>(command: &'a [String], name: &str) -> Option<&'a str> {
    let at = command.iter().position(|a| a == name)?;
    command.get(at + 1).map(String::as_str)
}

fn in_profile(service: &Value, profile: &str) -> bool {
    service["profiles"]
        .as_sequence()
        .is_some_and(|p| p.iter().any(|v| v.as_str() == Some(profile)))
}

/// A service's environment map: `None` for a name listed without a value (Compose passes the
/// host's value through when it is set, and leaves the variable out otherwise).
fn environment(service: &Value) -> BTreeMap<String, Option<String>> {
    let mut env = BTreeMap::new();
    match &service["environment"] {
        Value::Null => {}
        Value::Mapping(map) => {
            for (name, value) in map {
                let name = name
                    .as_str()
                    .expect("variable names are strings")
                    .to_string();
                let value = match value {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    other => panic!("{name}: unexpected value {other:?}"),
                };
                env.insert(name, value);
            }
        }
        other => panic!("environment must be a map: {other:?}"),
    }
    env
}

fn env_value(service: &Value, name: &str) -> Option<String> {
    environment(service).get(name).cloned().flatten()
}

fn port_of(listen: &str) -> u16 {
    let (_, port) = listen.rsplit_once(':').expect("HOST:PORT");
    port.parse()
        .unwrap_or_else(|e| panic!("port of {listen}: {e}"))
}

/// `http://host:port/path` → (host, port, path).
fn split_url(url: &str) -> (String, u16, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    (
        authority.split(':').next().unwrap().to_string(),
        port_of(authority),
        path.to_string(),
    )
}

fn stop_grace_period(name: &str, service: &Value) -> Duration {
    let text = service["stop_grace_period"].as_str().unwrap_or_else(|| {
        panic!("{name}: no stop_grace_period (Docker's default 10 s kills a draining worker)")
    });
    humantime::parse_duration(text)
        .unwrap_or_else(|e| panic!("{name}: stop_grace_period {text:?}: {e}"))
}

/// The longest a worker takes after SIGTERM with the default settings: its shutdown grace,
/// then the final commit and close.
fn drain_bound() -> Duration {
    otp_worker::WorkerConfig::default().shutdown_grace + otp_kafka::group::CLOSE_WITHIN
}

/// What Compose makes of a value: `${NAME:-default}` is the default (the variable is unset
/// here); any other `${...}` is a variable the operator must set, given a stand-in.
fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = start + rest[start..].find('}').expect("an unclosed ${");
        let inner = &rest[start + 2..end];
        match inner.find(":-") {
            Some(at) => out.push_str(&inner[at + 2..]),
            None => out.push_str("operator-value"),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Settings the operator passes through to the real-provider workers and without which they
/// do not start: stand-ins for the check.
const OPERATOR_SETTINGS: &[(&str, &str)] = &[
    ("OTP_WHATSAPP_PHONE_NUMBER_ID", "1055500000"),
    ("OTP_SMS_ACCOUNT_SID", "ACtest"),
    ("OTP_SMS_FROM", "+15557654321"),
];

/// Run a worker service's command as `otp worker <channel> ARGS --print-config` with the
/// service's environment, and return the effective settings it prints.
fn print_config(name: &str, service: &Value) -> String {
    let cmd = command(service);
    let channel = match worker_binary(&cmd) {
        Some("otp-whatsapp-worker") => "whatsapp",
        Some("otp-sms-worker") => "sms",
        _ => panic!("{name} runs no worker"),
    };
    run_as_composed(name, service, &["worker", channel], "--print-config")
}

/// Run `service`'s command as compose would (its environment, the operator's settings stood
/// in for), through `otp` and its `route` to the program, with `flag` added; its stdout.
/// Panics, naming the service, when the program refuses the command.
fn run_as_composed(name: &str, service: &Value, route: &[&str], flag: &str) -> String {
    let cmd = command(service);
    let mut run = Command::new(env!("CARGO_BIN_EXE_otp"));
    run.env_clear().args(route).args(&cmd[1..]).arg(flag);
    for (var, value) in environment(service) {
        match value {
            Some(value) => {
                run.env(&var, interpolate(&value));
            }
            None => {
                if let Some((_, stand_in)) = OPERATOR_SETTINGS.iter().find(|(n, _)| *n == var) {
                    run.env(&var, stand_in);
                }
            }
        }
    }
    let out = run.output().expect("run the otp binary");
    assert!(
        out.status.success(),
        "{name}: `{}` is refused: {}",
        cmd.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// A duration setting in the TOML that `--print-config` prints (`shutdown_grace = "30s"`).
fn printed_duration(toml: &str, key: &str) -> Duration {
    let prefix = format!("{key} = ");
    let value = toml
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key} in the printed settings:\n{toml}"))
        .trim()
        .trim_matches('"');
    humantime::parse_duration(value).unwrap_or_else(|e| panic!("{key} = {value}: {e}"))
}

/// `otp keys init` is the whole secret set-up of the compose stack: every variable the file
/// requires is in the `.env` it writes, each one valid for the service that reads it, every
/// secret file the file mounts exists, the printed API key is the key file's, and a second run
/// keeps the first one's keys. Neither file can be committed or sent to a Docker build.
#[test]
fn keys_init_writes_every_secret_the_compose_stack_needs() {
    let dir = tempfile::tempdir().unwrap();
    let init = |force: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp"));
        cmd.args(["keys", "init", "--dir"]).arg(dir.path());
        if force {
            cmd.arg("--force");
        }
        cmd.output().expect("run otp keys init")
    };
    let out = init(false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();

    let env_text = std::fs::read_to_string(dir.path().join(".env")).unwrap();
    let env: BTreeMap<&str, &str> = env_text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_once('=').expect("NAME=VALUE"))
        .collect();
    let compose_text = std::fs::read_to_string(format!("{ROOT}/docker-compose.yml")).unwrap();
    let mut required = BTreeSet::new();
    let mut rest = compose_text.as_str();
    while let Some(at) = rest.find("${") {
        rest = &rest[at + 2..];
        let end = rest.find('}').expect("a closed ${...}");
        if let Some((name, _)) = rest[..end].split_once(":?") {
            required.insert(name.to_string());
        }
    }
    assert!(required.len() >= 6, "{required:?}");
    for name in &required {
        let value = env.get(name.as_str()).copied().unwrap_or_default();
        assert!(
            !value.is_empty(),
            "docker-compose.yml needs {name}; .env has {env:?}"
        );
    }
    otp_events::Keyring::parse(env["OTP_SEAL_KEYS"]).expect("OTP_SEAL_KEYS");
    otp_events::RecordKeys::parse(env["OTP_RECORD_KEYS"])
        .expect("OTP_RECORD_KEYS")
        .require(&otp_events::Role::ALL)
        .expect("a key for every role");
    for hex_key in ["OTP_PHONE_HASH_KEY", "OTP_FALLBACK_KEY"] {
        assert_eq!(
            hex::decode(env[hex_key]).map(|k| k.len()).ok(),
            Some(32),
            "{hex_key}"
        );
    }
    // The key file compose mounts for the ingress, with the printed key's digest.
    let key_file = dir.path().join(env["OTP_API_KEYS_FILE"]);
    let apps = otp_producer::ingress::Apps::load(&key_file).expect("a valid API key file");
    assert_eq!(apps.names().collect::<Vec<_>>(), ["demo"]);
    let api_key = stdout
        .lines()
        .find(|l| l.starts_with("otp_"))
        .expect("the demo app's key is printed");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(api_key.as_bytes()));
    assert!(
        std::fs::read_to_string(&key_file)
            .unwrap()
            .contains(&digest),
        "the printed key is the file's"
    );
    // The secret files compose mounts by default.
    let compose = compose();
    for (_, secret) in compose["secrets"].as_mapping().expect("secrets") {
        let file = secret["file"].as_str().expect("a file");
        let default = file
            .split_once(":-")
            .map(|(_, d)| d.trim_end_matches('}'))
            .unwrap_or_else(|| env[file.trim_start_matches("${").split(':').next().unwrap()]);
        assert!(
            dir.path().join(default).is_file(),
            "{default} is not written"
        );
    }

    // A second run keeps the keys (they open what the stack sealed), unless forced.
    let again = init(false);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains(".env exists"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join(".env")).unwrap(),
        env_text
    );
    assert!(init(true).status.success());
    assert_ne!(
        std::fs::read_to_string(dir.path().join(".env")).unwrap(),
        env_text
    );

    let ignored = std::fs::read_to_string(format!("{ROOT}/.gitignore")).unwrap();
    let docker_ignored = std::fs::read_to_string(format!("{ROOT}/.dockerignore")).unwrap();
    for path in ["secrets/", ".env"] {
        assert!(
            ignored.lines().any(|l| l.trim_start_matches('/') == path),
            ".gitignore: {path}"
        );
        assert!(
            docker_ignored.lines().any(|l| l == path),
            ".dockerignore: {path}"
        );
    }
    assert!(
        docker_ignored.lines().any(|l| l == "target/"),
        ".dockerignore: target/"
    );
}
