//! `callflow tenants` as an operator uses it: add, show, update and list against a copy of the fixture tenants;
//! refused edits that leave the file byte for byte as it was; comments that survive; an edit on-webhook serves
//! without a restart; and the Google Cloud path, where the tenants file is a Secret Manager secret (a local fake
//! of its REST API: no emulator exists).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The CLI over the tenants file at `tenants`, with nothing from the caller's environment choosing another one.
fn cli(tenants: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_callflow"))
        .current_dir(common::repo())
        .env_remove("CALLFLOW_TENANTS_SECRET")
        .env_remove("CALLFLOW_ENVIRONMENT")
        .env_remove("SECRET_MANAGER_EMULATOR_HOST")
        .env("CALLFLOW_TENANTS", tenants)
        .envs(env.iter().copied())
        .arg("tenants")
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_out(out: &Output) -> Value {
    assert!(out.status.success(), "exit {:?}: {}{}", out.status.code(), stdout(out), stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

fn fixture(dir: &Path) -> PathBuf {
    common::fixture_tenants(dir, "http://127.0.0.1:8099")
}

/// The tenants the functions load from the file now.
fn loaded_ids(tenants: &Path) -> Vec<String> {
    let loaded = callflow::adapters::tenants_file::FileTenants::load(tenants).unwrap();
    let all = futures::executor::block_on(callflow::ports::TenantDirectory::list(&loaded)).unwrap();
    all.iter().map(|t| t.id.as_str().to_owned()).collect()
}

#[test]
fn a_tenant_is_added_shown_updated_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = fixture(dir.path());
    let key_value = "harbor-signing-key-value-never-printed";
    let env = [("HARBOR_TEST_SIGNING_KEY", key_value)];
    let out = cli(
        &tenants,
        &env,
        &[
            "add",
            "harbor-homes",
            "--name",
            "Harbor Homes",
            "--callrail-account",
            "ACC42",
            "--callrail-company",
            "COM42",
            "--callrail-company",
            "4242",
            "--callrail-signing-key",
            "env:HARBOR_TEST_SIGNING_KEY",
            "--callrail-api-key",
            "env:HARBOR_TEST_MISSING_API_KEY",
            "--forms-signing-key",
            "env:HARBOR_TEST_SIGNING_KEY",
            "--forms-per-minute",
            "30",
            "--crm-provider",
            "webhook",
            "--crm-credential",
            "env:HARBOR_TEST_SIGNING_KEY",
            "--crm-url",
            "https://crm.harbor.example/leads",
            "--crm-field",
            "zip=postal_code",
            "--retention-days",
            "120",
        ],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("+ id = \"harbor-homes\""), "the change is printed: {}", stdout(&out));
    assert!(stdout(&out).contains("tenant harbor-homes added in"), "{}", stdout(&out));
    // A reference to a secret not created yet is a warning, not a refusal.
    assert!(stderr(&out).contains("warning: tenant harbor-homes: callrail.api_key"), "{}", stderr(&out));
    assert_eq!(loaded_ids(&tenants), ["acme-remodeling", "bayside-baths", "harbor-homes"], "the functions load it");

    let out = cli(&tenants, &env, &["show", "harbor-homes", "--json"]);
    let shown = json_out(&out);
    let t = &shown["tenant"];
    assert_eq!(t["name"], "Harbor Homes");
    assert_eq!(t["retention_days"], 120);
    assert_eq!(t["callrail"]["company_ids"], json!(["COM42", "4242"]));
    assert_eq!(t["forms"]["per_minute"], 30);
    assert_eq!(t["crm"]["provider"], "webhook");
    assert_eq!(t["crm"]["field_mapping"]["zip"], "postal_code");
    assert_eq!(t["transcription"]["language"], "en-US", "as parsed: defaults filled in");
    let secrets = shown["secrets"].as_array().unwrap();
    let check = |field: &str| secrets.iter().find(|s| s["field"] == field).unwrap_or_else(|| panic!("{field}"));
    assert_eq!(check("callrail.signing_keys[0]")["ok"], true);
    assert_eq!(check("crm.credential")["reference"], "env:HARBOR_TEST_SIGNING_KEY");
    let missing = check("callrail.api_key");
    assert_eq!(missing["ok"], false);
    assert!(missing["error"].as_str().unwrap().contains("HARBOR_TEST_MISSING_API_KEY is not set"), "{missing}");
    let text = cli(&tenants, &env, &["show", "harbor-homes"]);
    assert!(text.status.success());
    for out in [&out, &text] {
        assert!(!stdout(out).contains(key_value) && !stderr(out).contains(key_value), "a secret value was printed");
    }
    assert!(stdout(&text).contains("callrail.api_key") && stdout(&text).contains("does not resolve"));

    let out = cli(
        &tenants,
        &env,
        &[
            "update",
            "harbor-homes",
            "--set",
            "retention_days=90",
            "--set",
            "crm.url=\"https://crm2.harbor.example/in\"",
        ],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let diff = stdout(&out);
    assert!(diff.contains("- retention_days = 120\n+ retention_days = 90"), "{diff}");
    assert!(diff.contains("  [tenant.crm]\n- url = \"https://crm.harbor.example/leads\""), "{diff}");
    let t = json_out(&cli(&tenants, &env, &["show", "harbor-homes", "--json"]))["tenant"].clone();
    assert_eq!(t["retention_days"], 90);
    assert_eq!(t["crm"]["url"], "https://crm2.harbor.example/in");

    let listed = json_out(&cli(&tenants, &[], &["list", "--json"]));
    let harbor = listed["tenants"].as_array().unwrap().iter().find(|t| t["id"] == "harbor-homes").unwrap().clone();
    assert_eq!(harbor["callrail_company_ids"], json!(["COM42", "4242"]));
    assert_eq!(harbor["crm_provider"], "webhook");
    assert_eq!(harbor["forms"], true);
    let bayside = listed["tenants"].as_array().unwrap().iter().find(|t| t["id"] == "bayside-baths").unwrap().clone();
    assert_eq!(bayside["crm_provider"], Value::Null);
    let table = stdout(&cli(&tenants, &[], &["list"]));
    assert!(table.contains("harbor-homes") && table.contains("3 tenant(s)"), "{table}");
}

#[test]
fn invalid_edits_are_refused_and_leave_the_file_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = fixture(dir.path());
    let original = std::fs::read(&tenants).unwrap();
    let keys = r#"callrail.signing_keys=["env:A", "env:B", "env:C"]"#;
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["update", "acme-remodeling", "--set", keys],
            &["tenant acme-remodeling", "callrail.signing_keys", "at most 2"],
        ),
        (
            &["update", "acme-remodeling", "--set", "colour=blue"],
            &["tenant acme-remodeling, field colour", "unknown field `colour`"],
        ),
        (
            &["update", "bayside-baths", "--set", "crm.provider=zoho", "--set", "crm.credential=env:X"],
            &["tenant bayside-baths, field crm.provider", "unknown variant `zoho`"],
        ),
        (&["update", "acme-remodeling", "--set", "retention_days=soon"], &["field retention_days", "expected u32"]),
        (&["update", "acme-remodeling", "--set", "id=acme"], &["changing a tenant's id is refused"]),
        (&["update", "acme-remodeling", "--unset", "crm.nothing"], &["tenant acme-remodeling", "no crm.nothing"]),
        (&["update", "acme-remodeling", "--unset", "crm.url"], &["crm.url is required for webhook"]),
        (
            &["update", "acme-remodeling", "--set", "workflow.min_score=10"],
            &["tenant acme-remodeling: its workflow comes from workflow_file"],
        ),
        (&["add", "acme-remodeling", "--name", "Again"], &["\"acme-remodeling\" already exists"]),
        (
            &["add", "harbor", "--name", "H", "--crm-provider", "salesforce", "--crm-credential", "env:X"],
            &["tenant harbor", "crm.url is required for salesforce"],
        ),
        (&["add", "Harbor/Homes", "--name", "H"], &["invalid tenant id"]),
        (&["add", "harbor", "--name", "H", "--callrail-account", "ACC1"], &["tenant harbor, field callrail"]),
    ];
    for (args, expected) in cases {
        let out = cli(&tenants, &[], args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}{}", stdout(&out), stderr(&out));
        for e in *expected {
            assert!(stderr(&out).contains(e), "{args:?}: expected {e:?} in: {}", stderr(&out));
        }
        assert_eq!(std::fs::read(&tenants).unwrap(), original, "{args:?} changed the file");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left behind");
}

#[test]
fn comments_and_layout_survive_an_update() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = fixture(dir.path());
    let original = std::fs::read_to_string(&tenants).unwrap();
    assert_eq!(original.matches("retention_days = 365").count(), 1);
    let out = cli(&tenants, &[], &["update", "acme-remodeling", "--set", "retention_days=90"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let updated = std::fs::read_to_string(&tenants).unwrap();
    // Every byte but the one value: comments, blank lines, key order, quoting, the other tenant.
    assert_eq!(updated, original.replace("retention_days = 365", "retention_days = 90"));

    // A value with a trailing comment keeps the comment; a new section goes under its own tenant.
    std::fs::write(&tenants, original.replace("per_minute = 60", "per_minute = 60  # Bayside's form volume")).unwrap();
    let out = cli(
        &tenants,
        &[],
        &["update", "bayside-baths", "--set", "forms.per_minute=90", "--set", "analysis.analyzer=rules"],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let updated = std::fs::read_to_string(&tenants).unwrap();
    assert!(updated.contains("per_minute = 90  # Bayside's form volume"), "{updated}");
    assert!(updated.ends_with("min_voicemail_secs = 5\n\n[tenant.analysis]\nanalyzer = \"rules\"\n"), "{updated}");
    assert!(updated.contains("# Two active keys: Bayside is rotating its CallRail signing key."));
}

#[test]
fn unknown_tenants_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = fixture(dir.path());
    let original = std::fs::read(&tenants).unwrap();
    for args in
        [&["show", "nobody"][..], &["show", "nobody", "--json"], &["update", "nobody", "--set", "retention_days=30"]]
    {
        let out = cli(&tenants, &[], args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains("no tenant \"nobody\" in") && err.contains("tenants.toml"), "{args:?}: {err}");
        assert!(stdout(&out).is_empty(), "{args:?}");
    }
    assert_eq!(std::fs::read(&tenants).unwrap(), original);
}

#[test]
fn a_dry_run_validates_and_prints_but_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = fixture(dir.path());
    let original = std::fs::read(&tenants).unwrap();
    let out = cli(&tenants, &[], &["add", "harbor-homes", "--name", "Harbor Homes", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("+ name = \"Harbor Homes\""), "{}", stdout(&out));
    assert!(stdout(&out).contains("dry run: tenant harbor-homes would be added"), "{}", stdout(&out));
    let out = cli(&tenants, &[], &["update", "acme-remodeling", "--set", "retention_days=30", "--dry-run", "--json"]);
    let change = json_out(&out);
    assert_eq!((change["dry_run"].clone(), change["written"].clone()), (json!(true), json!(false)));
    assert_eq!(change["before"]["retention_days"], 365);
    assert_eq!(change["after"]["retention_days"], 30);
    assert_eq!(change["diff"], json!(["  [[tenant]]", "- retention_days = 365", "+ retention_days = 30"]));
    // A dry run still refuses what the functions would not load.
    let out = cli(&tenants, &[], &["update", "acme-remodeling", "--set", "forms.per_minute=0", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("forms.per_minute must be at least 1"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&tenants).unwrap(), original);
}

#[test]
fn a_tenant_from_a_file_with_a_workflow_file() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = fixture(dir.path());
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    let workflow = dir.path().join("workflows/coastal.json");
    std::fs::write(&workflow, r#"{"spam": {"threshold": 70, "review_from": 40}, "min_score": 25}"#).unwrap();
    let from = dir.path().join("coastal.toml");
    std::fs::write(
        &from,
        "name = \"Coastal Decks\"\nretention_days = 200\n\n[callrail]\naccount_id = \"ACC9\"\ncompany_ids = [\"COM9\"]\n",
    )
    .unwrap();
    let out = cli(
        &tenants,
        &[],
        &["add", "coastal-decks", "--from", from.to_str().unwrap(), "--workflow-file", workflow.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = std::fs::read_to_string(&tenants).unwrap();
    assert!(
        text.ends_with(
            "[[tenant]]\nid = \"coastal-decks\"\nname = \"Coastal Decks\"\nretention_days = 200\nworkflow_file = \
             \"workflows/coastal.json\"\n\n[tenant.callrail]\naccount_id = \"ACC9\"\ncompany_ids = [\"COM9\"]\n"
        ),
        "referenced relative to the tenants file, the sections under the new tenant: {text}"
    );
    let t = json_out(&cli(&tenants, &[], &["show", "coastal-decks", "--json"]));
    assert_eq!(t["workflow_file"], "workflows/coastal.json");
    assert_eq!(t["tenant"]["workflow"]["spam"]["threshold"], 70);
    assert_eq!(t["tenant"]["workflow"]["min_score"], 25);

    // A --from for another id, and a broken workflow, are refused.
    let out = cli(&tenants, &[], &["add", "other", "--from", from.to_str().unwrap(), "--name", "O"]);
    assert!(out.status.success(), "a --from without an id takes the command's: {}", stderr(&out));
    std::fs::write(&from, "id = \"someone\"\nname = \"S\"\n").unwrap();
    let out = cli(&tenants, &[], &["add", "third", "--from", from.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is tenant \"someone\", not \"third\""), "{}", stderr(&out));
    let broken = dir.path().join("workflows/broken.json");
    std::fs::write(&broken, r#"{"spam": {"threshold": "high"}}"#).unwrap();
    let before = std::fs::read(&tenants).unwrap();
    let out = cli(&tenants, &[], &["update", "other", "--workflow-file", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("tenant other: workflow_file"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&tenants).unwrap(), before);
}

/// on-webhook follows the file: a tenant added while it runs is served within the reload interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_webhook_serves_an_added_tenant_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = fixture(dir.path());
    let vars = [
        ("CALLFLOW_DATA_DIR".to_owned(), dir.path().join("data").display().to_string()),
        ("CALLFLOW_TENANTS".to_owned(), tenants.display().to_string()),
        ("CALLFLOW_EVENTARC".to_owned(), common::repo().join("eventarc").display().to_string()),
        ("CALLFLOW_CALLRAIL_API".to_owned(), "http://127.0.0.1:1".to_owned()),
    ];
    let settings =
        on_webhook::Settings::from_lookup(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())).unwrap();
    let service = on_webhook::Service::from_settings(&settings).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/callrail/harbor-homes", listener.local_addr().unwrap());
    let app = on_webhook::app(service).into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let post = || async {
        reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post().await, 404, "no such tenant yet");
    let out = tokio::task::spawn_blocking(move || {
        let args =
            ["add", "harbor-homes", "--name", "Harbor", "--callrail-account", "ACC1", "--callrail-company", "COM1"];
        cli(&tenants, &[], &[&args[..], &["--callrail-signing-key", "env:HARBOR_KEY_NOT_SET"]].concat())
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Known now: the request fails its signature check (401) instead of naming an unknown tenant.
    while post().await == 404 {
        assert!(std::time::Instant::now() < deadline, "the added tenant was not picked up");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(post().await, 401);
}

const SECRET: &str = "projects/callflow-prod/secrets/callflow-tenants";

/// The tenants file as kept in Secret Manager: no workflow files (only tenants.toml is mounted), Secret Manager
/// references.
const STORED: &str = r#"# The tenants of the production deployment.

[[tenant]]
id = "acme-remodeling"
name = "Acme Remodeling"
retention_days = 365   # a year, by contract

[tenant.callrail]
account_id = "ACC1"
company_ids = ["COM1"]
signing_keys = ["gcp-sm:projects/callflow-prod/secrets/acme-callrail-signing-key"]

[tenant.crm]
provider = "webhook"
credential = "gcp-sm:projects/callflow-prod/secrets/acme-crm-missing"
url = "https://crm.acme.example/leads"
"#;

fn access_body(name: &str, data: &str) -> Value {
    json!({
        "name": name,
        "payload": {
            "data": base64::engine::general_purpose::STANDARD.encode(data),
            "dataCrc32c": crc32c::crc32c(data.as_bytes()).to_string(),
        }
    })
}

/// A fake Secret Manager: the tenants secret at version 7, one resolvable signing key, nothing else.
async fn secret_manager() -> MockServer {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/v1/{SECRET}/versions/latest:access")))
        .respond_with(ResponseTemplate::new(200).set_body_json(access_body(&format!("{SECRET}/versions/7"), STORED)))
        .mount(&mock)
        .await;
    let key = "projects/callflow-prod/secrets/acme-callrail-signing-key";
    Mock::given(method("GET"))
        .and(path(format!("/v1/{key}/versions/latest:access")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(access_body(&format!("{key}/versions/1"), "acme-key-never-printed")),
        )
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/v1/{SECRET}:addVersion")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"name": format!("{SECRET}/versions/8"), "state": "ENABLED"})),
        )
        .mount(&mock)
        .await;
    let not_found =
        json!({"error": {"code": 404, "message": "Secret not found or has no versions.", "status": "NOT_FOUND"}});
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(404).set_body_json(not_found)).mount(&mock).await;
    mock
}

/// The payloads of the versions added so far.
async fn added_versions(mock: &MockServer) -> Vec<String> {
    let requests = mock.received_requests().await.unwrap();
    requests
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            let data =
                base64::engine::general_purpose::STANDARD.decode(body["payload"]["data"].as_str().unwrap()).unwrap();
            let crc = body["payload"]["dataCrc32c"]
                .as_str()
                .map(str::to_owned)
                .or(body["payload"]["dataCrc32c"].as_i64().map(|n| n.to_string()));
            assert_eq!(
                crc,
                Some(crc32c::crc32c(&data).to_string()),
                "the payload's CRC32C is sent for the service to check"
            );
            String::from_utf8(data).unwrap()
        })
        .collect()
}

async fn gcp_cli(mock: &MockServer, args: &[&str]) -> Output {
    let uri = mock.uri();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    // The file named here must not be what is read: on Google Cloud the secret is the tenants file.
    let tenants = common::repo().join("fixtures/tenants.toml");
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&tenants, &[("CALLFLOW_ENVIRONMENT", "gcp"), ("SECRET_MANAGER_EMULATOR_HOST", &uri)], &args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_google_cloud_an_edit_is_a_new_version_of_the_tenants_secret() {
    let mock = secret_manager().await;
    let out = gcp_cli(&mock, &["update", "acme-remodeling", "--secret", SECRET, "--set", "retention_days=730"]).await;
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let added = added_versions(&mock).await;
    assert_eq!(
        added,
        [STORED.replace("retention_days = 365", "retention_days = 730")],
        "the edited file, comments kept"
    );
    assert!(
        stdout(&out).contains(&format!("new version {SECRET}/versions/8 (was {SECRET}/versions/7)")),
        "{}",
        stdout(&out)
    );
    // The missing CRM credential is a warning; the signing key resolves.
    let err = stderr(&out);
    assert!(err.contains("warning: tenant acme-remodeling: crm.credential") && !err.contains("signing_keys"), "{err}");

    // The secret comes from the environment as well; show reads it and checks references through it.
    let shown = gcp_cli(&mock, &["show", "acme-remodeling", "--json", "--secret", &format!("gcp-sm:{SECRET}")]).await;
    let doc = json_out(&shown);
    assert_eq!(doc["source"], format!("secret {SECRET}"));
    assert_eq!(doc["tenant"]["retention_days"], 365, "the fake's latest version is still 7");
    assert_eq!(doc["secrets"][0]["ok"], true);
    assert_eq!(doc["secrets"][1]["ok"], false);
    assert!(!stdout(&shown).contains("acme-key-never-printed"));

    // The workflow is inlined there (nothing but tenants.toml is mounted), and a dry run adds nothing.
    let workflow = common::repo().join("fixtures/workflows/acme-remodeling.json");
    let out = gcp_cli(
        &mock,
        &["update", "acme-remodeling", "--secret", SECRET, "--workflow-file", workflow.to_str().unwrap(), "--dry-run"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("+ [tenant.workflow.service_area]"), "{}", stdout(&out));
    // A refused edit adds nothing either.
    let out = gcp_cli(&mock, &["update", "acme-remodeling", "--secret", SECRET, "--set", "crm.provider=zoho"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("field crm.provider"), "{}", stderr(&out));
    assert_eq!(added_versions(&mock).await.len(), 1, "only the first edit added a version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_manager_refusals_are_clear_errors() {
    let denied = json!({"error": {"code": 403, "message": "Permission 'secretmanager.versions.access' denied.", "status": "PERMISSION_DENIED"}});
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(403).set_body_json(denied.clone()))
        .mount(&mock)
        .await;
    let out = gcp_cli(&mock, &["update", "acme-remodeling", "--secret", SECRET, "--set", "retention_days=1"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("cannot read secret {SECRET}: permission denied (403")), "{err}");
    assert!(err.contains("roles/secretmanager.secretAccessor"), "{err}");
    assert!(added_versions(&mock).await.is_empty());

    // Readable, but no right to add a version.
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(access_body(&format!("{SECRET}/versions/7"), STORED)))
        .mount(&mock)
        .await;
    let add_denied = json!({"error": {"code": 403, "message": "Permission 'secretmanager.versions.add' denied.", "status": "PERMISSION_DENIED"}});
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(403).set_body_json(add_denied)).mount(&mock).await;
    let out = gcp_cli(&mock, &["update", "acme-remodeling", "--secret", SECRET, "--set", "retention_days=1"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("cannot add a version to secret {SECRET}: permission denied (403")), "{err}");
    assert!(err.contains("roles/secretmanager.secretVersionAdder"), "{err}");

    // On Google Cloud a local file is not what the functions read: the secret must be named.
    let out = gcp_cli(&mock, &["list"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("give --secret projects/P/secrets/S or set CALLFLOW_TENANTS_SECRET"),
        "{}",
        stderr(&out)
    );
    let out = gcp_cli(&mock, &["list", "--secret", "projects/p/secrets/s/versions/3"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("expected projects/P/secrets/S"), "{}", stderr(&out));
}
