//! docker-compose.yml is not run in CI (no Docker engine here); this checks it parses and names
//! the services docs/production.md promises.

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
