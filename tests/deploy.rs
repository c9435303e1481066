//! What `deploy/` must share with the code, checked by parsing (no cluster, no Grafana): the
//! Kubernetes manifests' shutdown grace, readiness probes, secrets and KEDA triggers (topic,
//! consumer group, partition count); the Grafana dashboard's and the alert rules' metric
//! names; the Prometheus configuration and the Grafana provisioning.
//!
//! `dashboard_metric_names()` and `exported_metric_names()` are the helpers to reuse against a
//! live `/metrics`.

use otp_events::{Channel, FallbackKey, Keyring, PhoneHasher, Topics};
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

use common::dashboard::{dashboard, dashboard_exprs, dashboard_metric_names, metric_names_in};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

// --- metric names ----------------------------------------------------------------------------

/// Every metric name the code can export: the first argument of each `metrics::counter!`,
/// `gauge!` and `histogram!` under `crates/*/src` and `src/`. Names are exported as written
/// (the recorder adds no `_total`), and a histogram as `_bucket`, `_sum` and `_count` series:
/// `otp_kafka::observe::prometheus` builds the recorder with `set_buckets`.
pub fn exported_metric_names() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(&Path::new(ROOT).join("src"), &mut files);
    let crates = std::fs::read_dir(Path::new(ROOT).join("crates")).expect("read crates/");
    for krate in crates {
        rust_files(
            &krate.expect("a crate directory").path().join("src"),
            &mut files,
        );
    }
    let mut names = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read a source file");
        for (macro_name, series) in [
            ("counter!(", &[""][..]),
            ("gauge!(", &[""][..]),
            ("histogram!(", &["_bucket", "_sum", "_count"][..]),
        ] {
            let mut rest = text.as_str();
            while let Some(at) = rest.find(macro_name) {
                rest = &rest[at + macro_name.len()..];
                let Some(literal) = rest.trim_start().strip_prefix('"') else {
                    continue;
                };
                let name = &literal[..literal.find('"').expect("a closed string literal")];
                if name.starts_with("otp_") {
                    for suffix in series {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
            }
        }
    }
    names
}

/// The `otp_...` names in a PromQL expression.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn yaml_file(path: &str) -> Value {
    let text = std::fs::read_to_string(Path::new(ROOT).join(path))
        .unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"))
}

#[test]
fn the_metric_name_scanner_finds_what_it_should() {
    assert_eq!(
        metric_names_in(
            r#"sum by (le) (rate(otp_send_duration_seconds_bucket{x="otp-a"}[5m])) / xotp_no"#
        ),
        BTreeSet::from(["otp_send_duration_seconds_bucket".to_string()])
    );
    let exported = exported_metric_names();
    for name in [
        "otp_statuses_total",
        "otp_consumer_lag_messages",
        "otp_delivery_latency_seconds_bucket",
    ] {
        assert!(
            exported.contains(name),
            "the source scan misses {name}: {exported:?}"
        );
    }
}

#[test]
fn the_dashboard_parses_and_names_only_metrics_the_code_exports() {
    let dashboard = dashboard();
    let panels = dashboard["panels"]
        .as_array()
        .expect("the dashboard has panels");
    assert!(panels.len() >= 10, "only {} panels", panels.len());
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {:?} has no queries", panel["title"].as_str()));
        assert!(
            targets
                .iter()
                .all(|t| t["expr"].as_str().is_some_and(|e| !e.is_empty())),
            "panel {:?} has a target without an expr",
            panel["title"].as_str()
        );
    }
    let exported = exported_metric_names();
    for expr in dashboard_exprs() {
        let names = metric_names_in(&expr);
        assert!(!names.is_empty(), "a query names no otp_ metric: {expr}");
        for name in names {
            assert!(
                exported.contains(&name),
                "the dashboard queries {name}, which the code does not export: {expr}"
            );
        }
    }
    // What issue #15 asks the dashboard to show, by the metric that shows it.
    let used = dashboard_metric_names();
    for (what, name) in [
        ("deliveries by channel and status", "otp_statuses_total"),
        ("fallbacks by reason", "otp_confirmation_fallbacks_total"),
        (
            "end-to-end latency percentiles",
            "otp_delivery_latency_seconds_bucket",
        ),
        ("receipt confirmation rate", "otp_receipts_total"),
        ("consumer lag", "otp_consumer_lag_total"),
        ("consumer lag per partition", "otp_consumer_lag_messages"),
        ("oldest unfinished message", "otp_oldest_unfinished_seconds"),
        ("circuit state", "otp_circuit_state"),
        ("limiter waits and abuse refusals", "otp_limited_total"),
        ("provider throttling", "otp_send_errors_total"),
        ("dead letters", "otp_dead_letters_total"),
    ] {
        assert!(
            used.contains(name),
            "no panel shows {what} ({name}): {used:?}"
        );
    }
}

#[test]
fn the_alert_rules_name_only_metrics_the_code_exports() {
    let rules = yaml_file("deploy/prometheus/alerts.yml");
    let exported = exported_metric_names();
    let mut count = 0;
    for group in seq(&rules["groups"]) {
        for rule in seq(&group["rules"]) {
            let expr = rule["expr"].as_str().expect("a rule's expr");
            for name in metric_names_in(expr) {
                assert!(
                    exported.contains(&name),
                    "alert {:?} uses {name}, which the code does not export",
                    rule["alert"].as_str()
                );
            }
            count += 1;
        }
    }
    assert!(count > 0, "alerts.yml has no rules");
}

/// GitHub's anchor of a heading: lower case, spaces to `-`, other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_links_a_runbook_section_that_exists() {
    let runbook = std::fs::read_to_string(Path::new(ROOT).join("docs/operations.md"))
        .expect("read docs/operations.md");
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## ").or_else(|| l.strip_prefix("### ")))
        .map(anchor)
        .collect();
    assert!(
        anchors.contains("an-sms-provider-down-or-refusing-a-country"),
        "{anchors:?}"
    );
    let rules = yaml_file("deploy/prometheus/alerts.yml");
    for group in seq(&rules["groups"]) {
        for rule in seq(&group["rules"]) {
            let name = rule["alert"].as_str().expect("an alert's name");
            let url = rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} has no runbook_url"));
            let section = url.strip_prefix("docs/operations.md#").unwrap_or_else(|| {
                panic!("{name}: runbook_url {url} is not docs/operations.md#...")
            });
            assert!(
                anchors.contains(section),
                "{name}: docs/operations.md has no section #{section}"
            );
            assert!(
                runbook.contains(&format!("`{name}`")),
                "{name} is not named in its runbook"
            );
        }
    }
}

#[test]
fn prometheus_loads_the_alert_rules() {
    let config = yaml_file("deploy/prometheus/prometheus.yml");
    let rule_files: Vec<&str> = seq(&config["rule_files"])
        .map(|f| f.as_str().expect("rule file paths are strings"))
        .collect();
    assert!(
        rule_files.contains(&"alerts.yml"),
        "prometheus.yml must load alerts.yml: {rule_files:?}"
    );
    for file in &rule_files {
        assert!(
            Path::new(ROOT)
                .join("deploy/prometheus")
                .join(file)
                .is_file(),
            "rule file {file} (relative to prometheus.yml) does not exist"
        );
    }
    assert!(
        seq(&config["scrape_configs"]).count() > 0,
        "prometheus.yml scrapes nothing"
    );
}

#[test]
fn grafana_is_provisioned_with_prometheus_and_the_dashboard_picks_it() {
    let datasources = yaml_file("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert!(
        seq(&datasources["datasources"]).any(|d| d["type"].as_str() == Some("prometheus")),
        "no Prometheus data source provisioned"
    );
    let providers = yaml_file("deploy/grafana/provisioning/dashboards/otp-pipeline.yml");
    assert!(
        seq(&providers["providers"]).any(|p| p["options"]["path"].as_str().is_some()),
        "no dashboard provider with a path"
    );
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "the dashboard needs its Prometheus data source variable"
    );
}

// --- Kubernetes ------------------------------------------------------------------------------

/// Every document of every YAML file under deploy/kubernetes, with its file.
fn kubernetes_documents() -> Vec<(PathBuf, Value)> {
    let dir = Path::new(ROOT).join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read deploy/kubernetes")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests under deploy/kubernetes");
    files.iter().flat_map(|f| documents_of(f)).collect()
}

/// Every document of one YAML file, with its file.
fn documents_of(file: &Path) -> Vec<(PathBuf, Value)> {
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", file.display()))
        })
        .filter(|value| !value.is_null())
        .map(|value| (file.to_path_buf(), value))
        .collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn find<'a>(docs: &'a [(PathBuf, Value)], kind_: &str, name_: &str) -> Option<&'a Value> {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| kind(d) == kind_ && name(d) == name_)
}

fn seq(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_sequence().into_iter().flatten()
}

/// A container's command and args, as one list.
fn command_line(container: &Value) -> Vec<String> {
    seq(&container["command"])
        .chain(seq(&container["args"]))
        .map(|v| {
            v.as_str()
                .expect("command and args are strings")
                .to_string()
        })
        .collect()
}

fn containers(doc: &Value) -> impl Iterator<Item = &Value> {
    seq(&doc["spec"]["template"]["spec"]["containers"])
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1).map(String::as_str)
}

fn port_of(listen: &str) -> u64 {
    let (_, port) = listen.rsplit_once(':').expect("HOST:PORT");
    port.parse()
        .unwrap_or_else(|e| panic!("port of {listen}: {e}"))
}

/// A probe's port: a number, or the name of one of the container's ports.
fn probe_port(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let port_name = port.as_str().expect("a port number or name");
    seq(&container["ports"])
        .find(|p| p["name"].as_str() == Some(port_name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {port_name}"))
}

/// A setting as the container's process sees it: its flag, else a literal `env` value, else
/// a ConfigMap it takes with `envFrom`.
fn setting(
    docs: &[(PathBuf, Value)],
    container: &Value,
    flag_name: &str,
    env: &str,
) -> Option<String> {
    if let Some(value) = flag(&command_line(container), flag_name) {
        return Some(value.to_string());
    }
    if let Some(e) = seq(&container["env"]).find(|e| e["name"].as_str() == Some(env)) {
        return Some(e["value"].as_str().unwrap_or_default().to_string());
    }
    seq(&container["envFrom"])
        .filter_map(|source| source["configMapRef"]["name"].as_str())
        .filter_map(|map| find(docs, "ConfigMap", map))
        .find_map(|map| map["data"][env].as_str().map(str::to_string))
}

/// How many partitions the topics are created with: the `otp topics create` Job's
/// `--partitions`, else the command's default (read from its clap attribute in src/main.rs).
fn partitions_created(docs: &[(PathBuf, Value)]) -> u64 {
    let job = docs
        .iter()
        .map(|(_, d)| d)
        .filter(|d| kind(d) == "Job")
        .flat_map(containers)
        .map(command_line)
        .find(|c| {
            c.first().map(String::as_str) == Some("otp")
                && c.get(1..3) == Some(&["topics".to_string(), "create".to_string()][..])
        })
        .expect("a Job runs `otp topics create`");
    if let Some(n) = flag(&job, "--partitions") {
        return n.parse().expect("--partitions is a number");
    }
    let main = std::fs::read_to_string(Path::new(ROOT).join("src/main.rs")).expect("src/main.rs");
    let at = main
        .find("partitions: i32")
        .expect("`otp topics create` has a partitions flag in src/main.rs");
    let attribute = &main[..at];
    let default = attribute
        .rfind("default_value_t = ")
        .expect("the partitions flag has a default_value_t");
    attribute[default + "default_value_t = ".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("the partitions default is a number")
}

/// The longest a worker takes after SIGTERM with the default settings: its shutdown grace,
/// then the final commit and close.
fn drain_bound() -> Duration {
    otp_worker::WorkerConfig::default().shutdown_grace + otp_kafka::group::CLOSE_WITHIN
}

#[test]
fn every_manifest_parses_and_kustomize_lists_every_file() {
    let docs = kubernetes_documents();
    for (file, doc) in &docs {
        assert!(
            doc["apiVersion"].as_str().is_some() && !kind(doc).is_empty(),
            "{}: a document without apiVersion or kind",
            file.display()
        );
    }
    let kustomization = docs
        .iter()
        .map(|(_, d)| d)
        .find(|d| kind(d) == "Kustomization")
        .expect("a kustomization.yaml");
    let listed: BTreeSet<&str> = seq(&kustomization["resources"])
        .map(|r| r.as_str().expect("resources are paths"))
        .collect();
    let files: BTreeSet<String> = docs
        .iter()
        .map(|(f, _)| f.file_name().unwrap().to_string_lossy().to_string())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    for file in &files {
        assert!(
            listed.contains(file.as_str()),
            "{file} is not in kustomization.yaml's resources"
        );
    }
    for file in &listed {
        assert!(
            files.contains(*file),
            "kustomization.yaml lists {file}, which does not exist"
        );
    }
}

#[test]
fn each_worker_kind_drains_reports_readiness_and_scales_on_the_codes_names() {
    let docs = kubernetes_documents();
    let partitions = partitions_created(&docs);
    let drain = drain_bound();
    for (channel, binary) in [
        (Channel::Whatsapp, "otp-whatsapp-worker"),
        (Channel::Sms, "otp-sms-worker"),
    ] {
        let (deployment, container) = docs
            .iter()
            .map(|(_, d)| d)
            .filter(|d| kind(d) == "StatefulSet")
            .find_map(|d| {
                containers(d)
                    .find(|c| command_line(c).first().map(String::as_str) == Some(binary))
                    .map(|c| (d, c))
            })
            .unwrap_or_else(|| panic!("no StatefulSet runs {binary}"));
        let deployment_name = name(deployment);
        let pod = &deployment["spec"]["template"];

        let grace = pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or_else(|| panic!("{deployment_name}: no terminationGracePeriodSeconds"));
        assert!(
            Duration::from_secs(grace) > drain,
            "{deployment_name}: terminationGracePeriodSeconds {grace} must be above the shutdown \
             grace plus the final commit's bound ({drain:?})"
        );

        let args = command_line(container);
        let metrics = port_of(
            flag(&args, "--metrics-listen")
                .unwrap_or_else(|| panic!("{deployment_name}: no --metrics-listen, no /readyz")),
        );
        let probe = &container["readinessProbe"]["httpGet"];
        assert_eq!(
            probe["path"].as_str(),
            Some("/readyz"),
            "{deployment_name}: readiness must be /readyz"
        );
        assert_eq!(
            probe_port(container, &probe["port"]),
            metrics,
            "{deployment_name}: /readyz is served on the --metrics-listen port"
        );

        // The names the code derives (otp_events::Topics, otp-worker's runtime).
        let prefix =
            setting(&docs, container, "--topic-prefix", "OTP_TOPIC_PREFIX").unwrap_or_default();
        let topic = Topics::with_prefix(prefix.clone()).requests(channel);
        let group = setting(&docs, container, "--group-id", "OTP_GROUP_ID")
            .unwrap_or_else(|| format!("{prefix}otp-{}-workers", channel.as_str()));
        let brokers = setting(&docs, container, "--brokers", "OTP_KAFKA_BROKERS")
            .unwrap_or_else(|| panic!("{deployment_name}: no brokers"));

        // Static membership: the pod's stable name is the group instance id.
        let instance = seq(&container["env"])
            .find(|e| e["name"].as_str() == Some("OTP_GROUP_INSTANCE_ID"))
            .unwrap_or_else(|| panic!("{deployment_name}: no OTP_GROUP_INSTANCE_ID"));
        assert_eq!(
            instance["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            Some("metadata.name"),
            "{deployment_name}: the group instance id is the pod's name"
        );
        let service = deployment["spec"]["serviceName"]
            .as_str()
            .unwrap_or_default();
        assert!(
            find(&docs, "Service", service).is_some(),
            "{deployment_name}: no governing Service {service:?}"
        );

        let scaled = docs.iter().map(|(_, d)| d).find(|d| {
            kind(d) == "ScaledObject"
                && d["spec"]["scaleTargetRef"]["name"].as_str() == Some(deployment_name)
        });
        // SMS is bound by the fleet's provider budget, not by workers: not scaled on lag.
        let Some(scaled) = scaled else {
            assert_eq!(
                channel,
                Channel::Sms,
                "no ScaledObject scales {deployment_name}"
            );
            assert!(
                deployment["spec"]["replicas"].as_u64().unwrap_or(0) >= 2,
                "{deployment_name}: at least two replicas when not autoscaled"
            );
            continue;
        };
        assert_eq!(
            scaled["spec"]["scaleTargetRef"]["kind"].as_str(),
            Some("StatefulSet"),
            "{deployment_name}: the ScaledObject must name its target's kind"
        );
        let triggers: Vec<&Value> = seq(&scaled["spec"]["triggers"])
            .filter(|t| t["type"].as_str() == Some("kafka"))
            .collect();
        assert!(
            !triggers.is_empty(),
            "{deployment_name}: no KEDA kafka trigger"
        );
        for trigger in triggers {
            let meta = &trigger["metadata"];
            assert_eq!(
                meta["topic"].as_str(),
                Some(topic.as_str()),
                "{deployment_name}: the trigger must watch the topic the worker consumes"
            );
            assert_eq!(
                meta["consumerGroup"].as_str(),
                Some(group.as_str()),
                "{deployment_name}: the trigger must watch the workers' consumer group"
            );
            assert_eq!(
                meta["bootstrapServers"].as_str(),
                Some(brokers.as_str()),
                "{deployment_name}: the trigger must ask the brokers the workers use"
            );
            let threshold: usize = meta["lagThreshold"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("{deployment_name}: no lagThreshold"));
            let in_flight = otp_worker::WorkerConfig::default().max_in_flight;
            assert!(
                threshold > 2 * in_flight,
                "{deployment_name}: lagThreshold {threshold} must stay well above the {in_flight} \
                 messages a busy worker holds in flight (they count as lag)"
            );
        }
        let max = scaled["spec"]["maxReplicaCount"]
            .as_u64()
            .unwrap_or_else(|| panic!("{deployment_name}: no maxReplicaCount"));
        assert!(
            max <= partitions,
            "{deployment_name}: maxReplicaCount {max} is above the {partitions} partitions the \
             topics are created with (the extra workers would own nothing)"
        );
        let min = scaled["spec"]["minReplicaCount"].as_u64().unwrap_or(0);
        assert!(
            (1..=max).contains(&min),
            "{deployment_name}: minReplicaCount {min} (never zero: a code's user is waiting)"
        );

        let labels = pod["metadata"]["labels"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{deployment_name}: pods without labels"));
        let covered = docs.iter().map(|(_, d)| d).any(|d| {
            kind(d) == "PodDisruptionBudget"
                && d["spec"]["selector"]["matchLabels"]
                    .as_mapping()
                    .is_some_and(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)))
        });
        assert!(
            covered,
            "no PodDisruptionBudget selects {deployment_name}'s pods"
        );
    }
}

#[test]
fn secrets_come_from_the_secret_object_and_each_process_gets_its_own() {
    // The providers' credentials, as the worker binaries read them (crates/otp-channel-*/src/cli.rs).
    const WHATSAPP_TOKEN: &str = "OTP_WHATSAPP_TOKEN";
    const SMS_TOKEN: &str = "OTP_SMS_AUTH_TOKEN";
    let docs = kubernetes_documents();
    // Made out of band (never applied by `kubectl apply -k`, which would blank it): the
    // example lists every key.
    let secrets = documents_of(&Path::new(ROOT).join("deploy/kubernetes/out-of-band/secret.yaml"));
    assert!(
        docs.iter().all(|(_, d)| kind(d) != "Secret"),
        "a Secret in the kustomization would be written over the one made out of band"
    );
    let secret_names = [
        PhoneHasher::KEY_ENV,
        Keyring::ENV,
        FallbackKey::ENV,
        WHATSAPP_TOKEN,
        SMS_TOKEN,
        "OTP_WHATSAPP_APP_SECRET",
        "OTP_WHATSAPP_VERIFY_TOKEN",
    ];
    let mut checked = 0;
    for (file, doc) in &docs {
        for container in containers(doc) {
            let line = command_line(container);
            let env_names: BTreeSet<&str> = seq(&container["env"])
                .filter_map(|e| e["name"].as_str())
                .collect();
            for e in seq(&container["env"]) {
                let var = e["name"].as_str().unwrap_or_default();
                if !secret_names.contains(&var) && e["valueFrom"]["secretKeyRef"].is_null() {
                    continue;
                }
                assert!(
                    e["value"].is_null(),
                    "{}: {var} is written in the manifest; take it from a Secret",
                    file.display()
                );
                let reference = &e["valueFrom"]["secretKeyRef"];
                let secret_name = reference["name"].as_str().unwrap_or_default();
                let key = reference["key"].as_str().unwrap_or_default();
                let secret = find(&secrets, "Secret", secret_name).unwrap_or_else(|| {
                    panic!(
                        "{}: {var} refers to no Secret {secret_name:?}",
                        file.display()
                    )
                });
                assert!(
                    !secret["stringData"][key].is_null() || !secret["data"][key].is_null(),
                    "{}: Secret {secret_name} has no key {key} for {var}",
                    file.display()
                );
            }
            // Who must hold what (docs/security.md).
            let needs: &[&str] = match (
                line.first().map(String::as_str),
                line.get(1).map(String::as_str),
            ) {
                (Some("otp-whatsapp-worker"), _) => &[
                    PhoneHasher::KEY_ENV,
                    Keyring::ENV,
                    FallbackKey::ENV,
                    WHATSAPP_TOKEN,
                ],
                (Some("otp-sms-worker"), _) => &[
                    PhoneHasher::KEY_ENV,
                    Keyring::ENV,
                    FallbackKey::ENV,
                    SMS_TOKEN,
                ],
                (Some("otp-receipts"), Some("track")) => {
                    &[PhoneHasher::KEY_ENV, Keyring::ENV, FallbackKey::ENV]
                }
                (Some("otp-receipts"), Some("serve")) => &[PhoneHasher::KEY_ENV],
                (Some("otp-producer"), Some("serve")) => {
                    assert!(
                        !env_names.contains(FallbackKey::ENV),
                        "{}: a producer must never hold {}",
                        file.display(),
                        FallbackKey::ENV
                    );
                    &[PhoneHasher::KEY_ENV, Keyring::ENV]
                }
                _ => continue,
            };
            for var in needs {
                assert!(
                    env_names.contains(var),
                    "{}: `{}` does not start without {var}",
                    file.display(),
                    line.join(" ")
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "expected the two workers, the tracker and both ingresses: {checked}"
    );
}

/// Every pod template of the manifests (Deployments, StatefulSets, Jobs), with its owner's name.
fn pod_templates(docs: &[(PathBuf, Value)]) -> Vec<(String, &Value)> {
    docs.iter()
        .map(|(_, d)| d)
        .filter(|d| !d["spec"]["template"]["spec"].is_null())
        .map(|d| {
            (
                format!("{} {}", kind(d), name(d)),
                &d["spec"]["template"]["spec"],
            )
        })
        .collect()
}

/// Kubernetes' "restricted" Pod Security Standard (kubernetes.io/docs/concepts/security/
/// pod-security-standards), every control, for every pod: what the namespace label
/// `pod-security.kubernetes.io/enforce: restricted` admits.
#[test]
fn every_pod_meets_the_restricted_pod_security_standard() {
    let docs = kubernetes_documents();
    let pods = pod_templates(&docs);
    assert!(pods.len() >= 6, "{} pod templates", pods.len());
    for (owner, pod) in pods {
        for host in ["hostNetwork", "hostPID", "hostIPC"] {
            assert!(pod[host].as_bool() != Some(true), "{owner}: {host}");
        }
        assert!(
            seq(&pod["volumes"]).all(|v| v["hostPath"].is_null()),
            "{owner}: a hostPath volume"
        );
        let pod_security = &pod["securityContext"];
        let all: Vec<&Value> = seq(&pod["containers"])
            .chain(seq(&pod["initContainers"]))
            .collect();
        for c in all {
            let who = format!("{owner} container {}", c["name"].as_str().unwrap_or("?"));
            let sc = &c["securityContext"];
            let either = |key: &str| {
                if sc[key].is_null() {
                    &pod_security[key]
                } else {
                    &sc[key]
                }
            };
            assert!(
                sc["privileged"].as_bool() != Some(true),
                "{who}: privileged"
            );
            assert_eq!(
                sc["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{who}: allowPrivilegeEscalation must be false"
            );
            let dropped: Vec<&str> = seq(&sc["capabilities"]["drop"])
                .filter_map(Value::as_str)
                .collect();
            assert!(
                dropped.contains(&"ALL"),
                "{who}: capabilities must drop ALL"
            );
            assert!(
                seq(&sc["capabilities"]["add"]).all(|a| a.as_str() == Some("NET_BIND_SERVICE")),
                "{who}: only NET_BIND_SERVICE may be added"
            );
            assert_eq!(
                either("runAsNonRoot").as_bool(),
                Some(true),
                "{who}: runAsNonRoot"
            );
            assert!(
                either("runAsUser").as_u64() != Some(0),
                "{who}: runAsUser 0"
            );
            let seccomp = either("seccompProfile")["type"].as_str();
            assert!(
                matches!(seccomp, Some("RuntimeDefault" | "Localhost")),
                "{who}: seccompProfile RuntimeDefault or Localhost, not {seccomp:?}"
            );
        }
    }
    let namespace = find(&docs, "Namespace", "otp-pipeline").expect("the namespace");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"].as_str(),
        Some("restricted"),
        "the namespace enforces the restricted standard"
    );
}

/// A NetworkPolicy admits each component's own ports, over a default that admits nothing; the
/// two HTTP services and each worker kind have a PodDisruptionBudget.
#[test]
fn each_component_has_its_network_policy_and_disruption_budget() {
    let docs = kubernetes_documents();
    let policies: Vec<&Value> = docs
        .iter()
        .map(|(_, d)| d)
        .filter(|d| kind(d) == "NetworkPolicy")
        .collect();
    assert!(
        policies.iter().any(|p| p["spec"]["podSelector"]
            .as_mapping()
            .is_some_and(|m| m.is_empty())
            && p["spec"]["ingress"].is_null()),
        "no default policy that admits nothing"
    );
    for component in [
        "otp-whatsapp-worker",
        "otp-sms-worker",
        "otp-tracker",
        "otp-receipts",
        "otp-ingress",
    ] {
        let selects = |d: &Value| {
            d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"].as_str()
                == Some(component)
                || d["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str()
                    == Some(component)
        };
        let policy = policies
            .iter()
            .find(|p| selects(p))
            .unwrap_or_else(|| panic!("no NetworkPolicy for {component}"));
        // Every port the component serves is admitted from somewhere.
        let owner = docs
            .iter()
            .map(|(_, d)| d)
            .find(|d| {
                matches!(kind(d), "Deployment" | "StatefulSet")
                    && d["metadata"]["name"].as_str() == Some(component)
            })
            .unwrap_or_else(|| panic!("no workload {component}"));
        let admitted: BTreeSet<u64> = seq(&policy["spec"]["ingress"])
            .flat_map(|rule| seq(&rule["ports"]))
            .filter_map(|p| p["port"].as_u64())
            .collect();
        for port in containers(owner)
            .flat_map(|c| seq(&c["ports"]))
            .filter_map(|p| p["containerPort"].as_u64())
        {
            assert!(
                admitted.contains(&port),
                "{component}: port {port} is served but its NetworkPolicy admits {admitted:?}"
            );
        }
        assert!(
            docs.iter()
                .any(|(_, d)| kind(d) == "PodDisruptionBudget" && selects(d)),
            "no PodDisruptionBudget for {component}"
        );
    }
}

/// The Prometheus Operator's objects hold what the plain Prometheus config does: the same
/// alert rules, and a scrape that names jobs as the rules expect.
#[test]
fn the_prometheus_rule_holds_the_alert_rules_of_alerts_yml() {
    let monitoring = Path::new(ROOT).join("deploy/kubernetes/monitoring");
    let rule = documents_of(&monitoring.join("prometheus-rule.yaml"));
    let (_, rule) = rule.first().expect("a PrometheusRule");
    assert_eq!(kind(rule), "PrometheusRule");
    let alerts = yaml_file("deploy/prometheus/alerts.yml");
    assert_eq!(
        rule["spec"]["groups"], alerts["groups"],
        "deploy/kubernetes/monitoring/prometheus-rule.yaml differs from alerts.yml: copy its groups"
    );
    let monitor = documents_of(&monitoring.join("pod-monitor.yaml"));
    let (_, monitor) = monitor.first().expect("a PodMonitor");
    assert_eq!(kind(monitor), "PodMonitor");
    // The rules' `job` matchers name `sms-worker`, `tracker`, ...: the pods' app names
    // without `otp-`.
    let relabel = seq(&monitor["spec"]["podMetricsEndpoints"])
        .flat_map(|e| seq(&e["relabelings"]))
        .find(|r| r["targetLabel"].as_str() == Some("job"))
        .expect("the PodMonitor sets `job`");
    assert_eq!(relabel["regex"].as_str(), Some("otp-(.*)"));
    assert_eq!(relabel["replacement"].as_str(), Some("$1"));
    let kustomization = documents_of(&monitoring.join("kustomization.yaml"));
    let listed: Vec<&str> = seq(&kustomization[0].1["resources"])
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(listed, ["pod-monitor.yaml", "prometheus-rule.yaml"]);
}

/// The tracker is a consumer-group member like the workers: a StatefulSet whose pod name is
/// its static membership, with a governing Service, and a grace that covers its shutdown.
#[test]
fn the_tracker_is_a_static_member_of_its_group() {
    let docs = kubernetes_documents();
    let (tracker, container) = docs
        .iter()
        .map(|(_, d)| d)
        .find_map(|d| {
            containers(d)
                .find(|c| command_line(c).starts_with(&["otp-receipts".into(), "track".into()]))
                .map(|c| (d, c))
        })
        .expect("a manifest runs otp-receipts track");
    assert_eq!(kind(tracker), "StatefulSet", "{}", name(tracker));
    let instance = seq(&container["env"])
        .find(|e| e["name"].as_str() == Some("OTP_GROUP_INSTANCE_ID"))
        .expect("the tracker sets OTP_GROUP_INSTANCE_ID");
    assert_eq!(
        instance["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("metadata.name")
    );
    let service = tracker["spec"]["serviceName"].as_str().unwrap_or_default();
    assert!(
        find(&docs, "Service", service).is_some(),
        "no Service {service:?}"
    );
    let grace = tracker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("a termination grace");
    let shutdown = otp_receipts::tracker::TrackerConfig::default().shutdown_grace;
    assert!(
        Duration::from_secs(grace) > shutdown + otp_kafka::group::CLOSE_WITHIN,
        "terminationGracePeriodSeconds {grace} must cover the tracker's shutdown grace \
         {shutdown:?} and the final commit's bound"
    );
}
