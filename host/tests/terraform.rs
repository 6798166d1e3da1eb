//! terraform/ checked where Terraform's registry cannot be reached: every file parses (hcl-rs), what it takes
//! from eventarc/ and shared/schemas/ is current, every reference resolves, every function has its service, its
//! triggers and its schedule, every table matches its schema file, and every service account holds the least its
//! function needs (the table below).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hcl::{Block, Body, Expression, ObjectKey};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `*.tf` file, parsed, with its name and text.
fn files() -> Vec<(String, String, Body)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo().join("terraform")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "tf") {
            let text = std::fs::read_to_string(&path).unwrap();
            let body = hcl::parse(&text).unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            out.push((path.file_name().unwrap().to_string_lossy().into_owned(), text, body));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 10, "terraform/ has {} .tf files", out.len());
    out
}

fn blocks<'a>(files: &'a [(String, String, Body)], kind: &str) -> Vec<&'a Block> {
    files.iter().flat_map(|(_, _, b)| b.blocks()).filter(|b| b.identifier() == kind).collect()
}

/// `resource "TYPE" "NAME"`.
fn resource<'a>(files: &'a [(String, String, Body)], ty: &str, name: &str) -> &'a Block {
    blocks(files, "resource")
        .into_iter()
        .find(|b| b.labels().len() == 2 && b.labels()[0].as_str() == ty && b.labels()[1].as_str() == name)
        .unwrap_or_else(|| panic!("terraform/ declares no resource {ty}.{name}"))
}

fn attr<'a>(body: &'a Body, key: &str) -> &'a Expression {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr()).unwrap_or_else(|| panic!("no attribute {key}"))
}

fn child<'a>(body: &'a Body, kind: &str) -> &'a Body {
    body.blocks().find(|b| b.identifier() == kind).map(|b| b.body()).unwrap_or_else(|| panic!("no block {kind}"))
}

/// The text of an expression (references and calls as HCL writes them).
fn text(e: &Expression) -> String {
    e.to_string()
}

/// A literal expression as JSON; anything computed as its HCL text.
fn literal(e: &Expression) -> Value {
    match e {
        Expression::Null => Value::Null,
        Expression::Bool(b) => json!(b),
        Expression::Number(n) => serde_json::from_str(&n.to_string()).unwrap(),
        Expression::String(s) => json!(s),
        Expression::Array(items) => Value::Array(items.iter().map(literal).collect()),
        Expression::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let key = match k {
                        ObjectKey::Expression(Expression::String(s)) => s.clone(),
                        other => other.to_string(),
                    };
                    (key, literal(v))
                })
                .collect(),
        ),
        other => json!(other.to_string()),
    }
}

/// `local.NAME` from whichever locals block defines it.
fn local<'a>(files: &'a [(String, String, Body)], name: &str) -> &'a Expression {
    let found: Vec<&Expression> = blocks(files, "locals")
        .into_iter()
        .flat_map(|b| b.body().attributes())
        .filter(|a| a.key() == name)
        .map(|a| a.expr())
        .collect();
    assert_eq!(found.len(), 1, "local.{name} is defined {} times", found.len());
    found[0]
}

fn generated() -> Value {
    let text = std::fs::read_to_string(repo().join(callflow_host::terraform::GENERATED)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The functions of the workspace: one crate per directory under functions/.
fn functions() -> BTreeSet<String> {
    std::fs::read_dir(repo().join("functions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn the_generated_file_is_what_eventarc_and_the_schemas_make() {
    let made = callflow_host::terraform::generate(&repo()).unwrap();
    let committed = std::fs::read_to_string(repo().join(callflow_host::terraform::GENERATED)).unwrap();
    assert!(
        made == committed,
        "terraform/generated.tf.json differs from eventarc/ and shared/schemas/: run `callflow terraform generate`"
    );
}

#[test]
fn every_reference_resolves() {
    let files = files();
    let all: String = files.iter().map(|(_, t, _)| t.as_str()).collect::<Vec<_>>().join("\n");
    let variables: BTreeSet<&str> = blocks(&files, "variable").iter().map(|b| b.labels()[0].as_str()).collect();
    let mut locals: BTreeSet<String> =
        blocks(&files, "locals").iter().flat_map(|b| b.body().attributes()).map(|a| a.key().to_owned()).collect();
    locals.extend(keys(&generated()["locals"]));
    let resources: BTreeSet<(String, String)> = blocks(&files, "resource")
        .iter()
        .map(|b| (b.labels()[0].as_str().to_owned(), b.labels()[1].as_str().to_owned()))
        .collect();
    let data: BTreeSet<(String, String)> = blocks(&files, "data")
        .iter()
        .map(|b| (b.labels()[0].as_str().to_owned(), b.labels()[1].as_str().to_owned()))
        .collect();

    let var_re = regex::Regex::new(r"\bvar\.([a-z_][a-z0-9_]*)").unwrap();
    for c in var_re.captures_iter(&all) {
        assert!(variables.contains(&c[1]), "var.{} is used but not declared", &c[1]);
    }
    let local_re = regex::Regex::new(r"\blocal\.([a-z_][a-z0-9_]*)").unwrap();
    for c in local_re.captures_iter(&all) {
        assert!(locals.contains(&c[1]), "local.{} is used but not defined", &c[1]);
    }
    let ref_re = regex::Regex::new(r"(\bdata\.)?\b((?:google|terraform)_[a-z0-9_]+)\.([a-z_][a-z0-9_]*)\b").unwrap();
    let mut checked = 0;
    for c in ref_re.captures_iter(&all) {
        let key = (c[2].to_owned(), c[3].to_owned());
        if c.get(1).is_some() {
            assert!(data.contains(&key), "data.{}.{} is used but not declared", &c[2], &c[3]);
        } else {
            assert!(resources.contains(&key), "{}.{} is used but not declared", &c[2], &c[3]);
        }
        checked += 1;
    }
    assert!(checked > 50, "only {checked} references found");
    // Every declared variable is used, and documented.
    for b in blocks(&files, "variable") {
        let name = b.labels()[0].as_str();
        assert!(all.contains(&format!("var.{name}")), "variable {name} is never used");
        assert!(b.body().attributes().any(|a| a.key() == "description"), "variable {name} has no description");
    }
}

#[test]
fn every_function_has_a_service_an_identity_and_its_triggers() {
    let files = files();
    let defaults = literal(local(&files, "function_defaults"));
    assert_eq!(keys(&defaults), functions(), "local.function_defaults names every function under functions/");
    for (f, d) in defaults.as_object().unwrap() {
        for key in ["min_instances", "max_instances", "concurrency", "cpu", "memory", "cpu_idle"] {
            assert!(d.get(key).is_some(), "{f} has no starting {key}");
        }
        assert!(d["min_instances"].as_u64() <= d["max_instances"].as_u64(), "{f}: min above max");
    }
    // on-webhook's outbox worker needs CPU after the answer; cleanup must not run twice at once.
    assert_eq!(defaults["on-webhook"]["cpu_idle"], json!(false));
    assert!(defaults["on-webhook"]["min_instances"].as_u64() >= Some(1));
    assert_eq!(defaults["cleanup-scheduled"]["max_instances"], json!(1));

    let service = resource(&files, "google_cloud_run_v2_service", "fn");
    assert_eq!(text(attr(service.body(), "for_each")), "local.settings");
    assert_eq!(
        text(attr(child(service.body(), "template"), "service_account")),
        "google_service_account.fn[each.key].email"
    );
    let ingress = text(attr(service.body(), "ingress"));
    assert!(
        ingress.contains(r#"each.key == "on-webhook""#) && ingress.contains("INGRESS_TRAFFIC_INTERNAL_ONLY"),
        "{ingress}"
    );
    let timeout = text(attr(child(service.body(), "template"), "timeout"));
    assert!(timeout.contains("local.timeouts[each.key]"), "{timeout}");

    // Only on-webhook is public; the others are invoked by the trigger identity alone.
    let public = resource(&files, "google_cloud_run_v2_service_iam_member", "webhook_public");
    assert_eq!(text(attr(public.body(), "member")), r#""allUsers""#);
    assert!(text(attr(public.body(), "name")).contains(r#"fn["on-webhook"]"#));
    let all_users = files.iter().map(|(_, t, _)| t.matches("allUsers").count()).sum::<usize>();
    assert_eq!(all_users, 1, "allUsers appears once: on-webhook's invoker");

    // Every function but on-webhook (which CallRail calls) is some trigger's destination.
    let g = generated();
    let triggers = &g["locals"]["eventarc"]["triggers"];
    let destinations: BTreeSet<String> =
        triggers.as_object().unwrap().values().map(|t| t["destination"].as_str().unwrap().to_owned()).collect();
    let mut triggered = functions();
    triggered.remove("on-webhook");
    assert_eq!(destinations, triggered);
    let trigger = resource(&files, "google_eventarc_trigger", "t");
    assert_eq!(text(attr(trigger.body(), "for_each")), "local.eventarc.triggers");
    let dest = text(attr(child(child(trigger.body(), "destination"), "cloud_run_service"), "service"));
    assert_eq!(dest, "google_cloud_run_v2_service.fn[each.value.destination].name");
    let identity = text(attr(trigger.body(), "service_account"));
    assert_eq!(identity, "google_service_account.eventarc.email");
    let invoker = resource(&files, "google_cloud_run_v2_service_iam_member", "trigger_invoker");
    assert!(text(attr(invoker.body(), "member")).contains("google_service_account.eventarc.email"));
    assert!(text(attr(invoker.body(), "for_each")).contains("t.destination"));

    // The trigger's retry and dead-letter policy is applied to its subscription, every field of it.
    let policy = resource(&files, "terraform_data", "delivery_policy");
    assert_eq!(text(attr(policy.body(), "for_each")), "local.eventarc.triggers");
    let command = text(attr(child(policy.body(), "provisioner"), "command"));
    for field in ["min_backoff_secs", "max_backoff_secs", "max_delivery_attempts", "dead_letter_topic_role"] {
        assert!(command.contains(&format!("each.value.retry.{field}")), "the policy command ignores {field}");
    }
    assert!(command.contains("each.value.ack_deadline_secs"));

    // Schedules: one Cloud Scheduler job each, on the schedule's topic.
    let job = resource(&files, "google_cloud_scheduler_job", "s");
    assert_eq!(text(attr(job.body(), "for_each")), "local.eventarc.schedules");
    assert_eq!(text(attr(job.body(), "schedule")), "each.value.cron");
    let target = child(job.body(), "pubsub_target");
    assert_eq!(text(attr(target, "topic_name")), "google_pubsub_topic.t[each.value.topic_role].id");
}

#[test]
fn the_trigger_definitions_reach_terraform_unchanged() {
    // Read back from the generated file and compared with the parsed definitions field by field.
    let defs = callflow::eventarc::load(&repo().join("eventarc"), "gcp").unwrap().bind_project("p");
    let g = generated();
    let e = &g["locals"]["eventarc"];
    let bind = |v: &Value| v.as_str().unwrap().replace("${var.project}", "p");
    assert_eq!(keys(&e["triggers"]).len(), defs.triggers.len());
    for t in &defs.triggers {
        let tf = &e["triggers"][&t.name];
        assert_eq!(tf["destination"], json!(t.destination), "{}", t.name);
        assert_eq!(tf["event_type"], json!(t.event_type.as_str()), "{}", t.name);
        assert_eq!(tf["timeout_secs"], json!(t.timeout.as_secs()), "{}", t.name);
        let source = match &t.source {
            callflow::eventarc::Source::Bucket(b) => (bind(&e["buckets"][tf["bucket_role"].as_str().unwrap()]), b),
            callflow::eventarc::Source::Topic(topic) => (bind(&e["topics"][tf["topic_role"].as_str().unwrap()]), topic),
        };
        assert_eq!(&source.0, source.1, "{}", t.name);
        let r = &tf["retry"];
        assert_eq!(r["min_backoff_secs"], json!(t.retry.min_backoff.as_secs()));
        assert_eq!(r["max_backoff_secs"], json!(t.retry.max_backoff.as_secs()));
        assert_eq!(r["max_delivery_attempts"], json!(t.retry.max_delivery_attempts));
        assert_eq!(bind(&e["topics"][r["dead_letter_topic_role"].as_str().unwrap()]), t.retry.dead_letter_topic);
        assert!(tf["ack_deadline_secs"].as_u64().unwrap() <= 600);
    }
    for s in &defs.schedules {
        let tf = &e["schedules"][&s.name];
        assert_eq!(tf["cron"], json!(s.cron.as_str()));
        assert_eq!(bind(&e["topics"][tf["topic_role"].as_str().unwrap()]), s.topic);
        assert_eq!(tf["data"].as_str().unwrap().as_bytes(), s.body().as_slice());
    }
    // The buckets and topics terraform creates are the environment's, and every dead-letter topic is held by a
    // subscription so that nothing given to it is dropped.
    let files = files();
    assert_eq!(text(attr(resource(&files, "google_storage_bucket", "b").body(), "for_each")), "local.eventarc.buckets");
    assert_eq!(text(attr(resource(&files, "google_pubsub_topic", "t").body(), "for_each")), "local.eventarc.topics");
    let hold = resource(&files, "google_pubsub_subscription", "dead_letters");
    assert_eq!(text(attr(hold.body(), "for_each")), "local.dead_letter_roles");
    assert_eq!(text(attr(hold.body(), "retain_acked_messages")), "true");
    assert_eq!(text(attr(child(hold.body(), "expiration_policy"), "ttl")), r#""""#);
}

#[test]
fn buckets_are_private_and_age_into_colder_classes() {
    let files = files();
    let b = resource(&files, "google_storage_bucket", "b").body();
    assert_eq!(text(attr(b, "uniform_bucket_level_access")), "true");
    assert_eq!(text(attr(b, "public_access_prevention")), r#""enforced""#);
    let rules: Vec<String> = b
        .blocks()
        .filter(|r| r.identifier() == "lifecycle_rule")
        .map(|r| {
            format!(
                "{} {}",
                text(attr(child(r.body(), "condition"), "age")),
                text(attr(child(r.body(), "action"), "type"))
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            r#"var.coldline_after_days "SetStorageClass""#,
            r#"var.archive_after_days "SetStorageClass""#,
            r#"var.delete_after_days "Delete""#
        ]
    );
}

#[test]
fn tables_match_the_schema_files_and_the_database_the_migrations() {
    let files = files();
    let g = generated();
    // One table per schema file, whose schema is that file.
    let tables: Vec<String> = serde_json::from_value(g["locals"]["analytics_tables"].clone()).unwrap();
    let dir = repo().join("shared/schemas/analytics");
    assert_eq!(tables, callflow_host::terraform::analytics_tables(&dir).unwrap());
    assert!(tables.contains(&"calls".to_owned()));
    let table = resource(&files, "google_bigquery_table", "t").body();
    assert_eq!(text(attr(table, "for_each")), "toset(local.analytics_tables)");
    let schema = text(attr(table, "schema"));
    assert!(schema.contains("file(") && schema.contains("/../shared/schemas/analytics/${each.key}.json"), "{schema}");
    assert_eq!(literal(attr(table, "clustering")), json!(["tenant_id"]));
    let partitioning = child(table, "time_partitioning");
    assert_eq!(text(attr(partitioning, "type")), r#""DAY""#);
    assert_eq!(text(attr(partitioning, "field")), r#""event_time""#);
    // The partition and cluster columns exist, with the types BigQuery requires, in every schema file.
    for t in &tables {
        let fields: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{t}.json"))).unwrap()).unwrap();
        let field =
            |name: &str| fields.iter().find(|f| f["name"] == name).unwrap_or_else(|| panic!("{t} has no {name}"));
        assert_eq!(field("event_time")["type"], "TIMESTAMP", "{t}");
        assert_eq!(field("tenant_id")["type"], "STRING", "{t}");
        for f in &fields {
            let ty = f["type"].as_str().unwrap();
            assert!(
                ["STRING", "TIMESTAMP", "INT64", "FLOAT64", "BOOL", "NUMERIC", "JSON", "DATE"].contains(&ty),
                "{t}.{}: {ty} is not a BigQuery type",
                f["name"]
            );
        }
    }
    // The database's DDL is the migrations' statements, in order, as migrate applies them.
    let expected: Vec<String> = callflow::adapters::spanner::MIGRATIONS
        .iter()
        .flat_map(|(_, ddl)| callflow::adapters::spanner::statements(ddl))
        .collect();
    let ddl: Vec<String> = serde_json::from_value(g["locals"]["spanner_ddl"].clone()).unwrap();
    assert_eq!(ddl, expected);
    assert!(ddl.iter().any(|s| s.starts_with("CREATE TABLE calls")));
    let db = resource(&files, "google_spanner_database", "main").body();
    assert_eq!(text(attr(db, "ddl")), "local.spanner_ddl");
}

/// What each function touches, and the narrowest role for it (why: terraform/iam.tf). A grant added to
/// terraform without this table, or a broader role, fails here.
/// The names a view's SQL reads: every `` `{dataset}.NAME` ``.
fn reads(sql: &str) -> BTreeSet<String> {
    sql.split("`{dataset}.").skip(1).filter_map(|rest| rest.split_once('`')).map(|(name, _)| name.to_owned()).collect()
}

#[test]
fn views_are_the_sinks_views_and_each_reads_only_what_exists_before_it() {
    use callflow::domain::analytics::{TABLES, VIEWS};
    let dir = repo().join("shared/schemas/analytics/views");
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".sql").map(str::to_owned))
            .collect()
    };
    let (base, rest) = (names(&dir.join("base")), names(&dir));
    let all: BTreeSet<String> = VIEWS.iter().map(|(name, _)| name.to_string()).collect();
    assert_eq!(base.union(&rest).cloned().collect::<BTreeSet<_>>(), all, "view files = domain::analytics::VIEWS");
    let tables: BTreeSet<String> = TABLES.iter().map(|(name, _)| name.to_string()).collect();
    // terraform creates views/base/ before views/ (depends_on), the sinks in VIEWS order: a base view reads
    // tables only, any other view tables and base views; and VIEWS lists the base views first.
    for (name, sql) in VIEWS {
        let allowed: BTreeSet<String> =
            if base.contains(*name) { tables.clone() } else { tables.union(&base).cloned().collect() };
        let read = reads(sql);
        assert!(!read.is_empty(), "{name} reads no table");
        assert!(read.is_subset(&allowed), "{name} reads {:?}, beyond {allowed:?}", read.difference(&allowed));
    }
    let first_rest = VIEWS.iter().position(|(n, _)| !base.contains(*n)).unwrap();
    assert!(VIEWS[first_rest..].iter().all(|(n, _)| !base.contains(*n)), "VIEWS lists the base views first");
    let files = files();
    let base_views = resource(&files, "google_bigquery_table", "base_views");
    let views = resource(&files, "google_bigquery_table", "views");
    assert!(text(attr(base_views.body(), "for_each")).contains("views/base/*.sql"));
    assert!(text(attr(views.body(), "for_each")).contains("views/*.sql"));
    assert!(text(attr(views.body(), "depends_on")).contains("google_bigquery_table.base_views"));
}

fn least_privilege() -> Value {
    json!({
        "on-webhook": {
            "buckets": {"recordings": "roles/storage.objectUser", "transcripts": "roles/storage.objectUser"},
            "topics": {},
            "project": [],
        },
        "on-audio-uploaded": {
            "buckets": {"recordings": "roles/storage.objectViewer", "transcripts": "roles/storage.objectUser"},
            "topics": {},
            "project": ["roles/speech.client"],
        },
        "on-transcript": {
            "buckets": {"transcripts": "roles/storage.objectViewer"},
            "topics": {"analysis-complete": "roles/pubsub.publisher"},
            "project": ["roles/aiplatform.user"],
        },
        "on-analysis": {"buckets": {}, "topics": {"crm-retry": "roles/pubsub.publisher"}, "project": []},
        "on-crm-retry": {"buckets": {}, "topics": {"crm-retry": "roles/pubsub.publisher"}, "project": []},
        "cleanup-scheduled": {
            "buckets": {"recordings": "roles/storage.objectUser", "transcripts": "roles/storage.objectUser"},
            "topics": {"crm-retry": "roles/pubsub.publisher"},
            "project": [],
        },
    })
}

#[test]
fn every_service_account_holds_the_least_its_function_needs() {
    let files = files();
    assert_eq!(literal(local(&files, "access")), least_privilege());
    assert_eq!(keys(&least_privilege()), functions());
    assert_eq!(literal(local(&files, "all_functions_database_role")), json!("roles/spanner.databaseUser"));
    assert_eq!(literal(local(&files, "all_functions_dataset_role")), json!("roles/bigquery.dataEditor"));
    // Each grant is on the one resource the table names.
    let bucket = resource(&files, "google_storage_bucket_iam_member", "fn").body();
    assert_eq!(text(attr(bucket, "bucket")), "google_storage_bucket.b[each.value.bucket].name");
    let topic = resource(&files, "google_pubsub_topic_iam_member", "fn").body();
    assert_eq!(text(attr(topic, "topic")), "google_pubsub_topic.t[each.value.topic].name");
    let db = resource(&files, "google_spanner_database_iam_member", "fn").body();
    assert_eq!(text(attr(db, "database")), "google_spanner_database.main.name");

    // Project-wide grants: only the table's, and the two the platform requires of Eventarc.
    let mut project_grants: Vec<String> = blocks(&files, "resource")
        .into_iter()
        .filter(|b| b.labels()[0].as_str() == "google_project_iam_member")
        .map(|b| format!("{} {}", b.labels()[1].as_str(), text(attr(b.body(), "role"))))
        .collect();
    project_grants.sort();
    assert_eq!(
        project_grants,
        [
            r#"eventarc_receiver "roles/eventarc.eventReceiver""#,
            "fn each.value.role",
            r#"gcs_agent_publisher "roles/pubsub.publisher""#,
        ]
    );
    // No broad role anywhere.
    let role_re = regex::Regex::new(r#""(roles/[A-Za-z.]+)""#).unwrap();
    let all: String = files.iter().map(|(_, t, _)| t.as_str()).collect::<Vec<_>>().join("\n");
    let roles: BTreeSet<&str> = role_re.captures_iter(&all).map(|c| c.get(1).unwrap().as_str()).collect();
    for role in &roles {
        assert!(
            !(role.ends_with(".admin") || ["roles/owner", "roles/editor", "roles/viewer"].contains(role)),
            "{role} is broader than any function needs"
        );
    }
    // Secrets: each readable by the functions var.secrets lists for it; the tenants file by every function.
    let secret = resource(&files, "google_secret_manager_secret_iam_member", "s").body();
    assert!(text(attr(secret, "member")).contains("google_service_account.fn[each.value.function].email"));
    let tenants = resource(&files, "google_secret_manager_secret_iam_member", "tenants").body();
    assert_eq!(text(attr(tenants, "role")), r#""roles/secretmanager.secretAccessor""#);
    assert_eq!(text(attr(tenants, "for_each")), "local.function_defaults");
}

#[test]
fn alerts_cover_errors_latency_dead_letters_and_crm_success() {
    let files = files();
    let policies: BTreeSet<&str> = blocks(&files, "resource")
        .into_iter()
        .filter(|b| b.labels()[0].as_str() == "google_monitoring_alert_policy")
        .map(|b| b.labels()[1].as_str())
        .collect();
    for p in ["error_rate", "latency", "dead_letters", "dead_lettered_calls", "crm_success"] {
        assert!(policies.contains(p), "no alert policy {p}");
    }
    // The CRM metric's filter names log messages the code really writes.
    let metric = text(attr(resource(&files, "google_logging_metric", "crm_pushes").body(), "filter"));
    let source = std::fs::read_to_string(repo().join("shared/src/runtime/lead_delivery.rs")).unwrap();
    for message in
        ["lead delivered", "push failed; retry scheduled", "circuit open; push deferred", "lead dead-lettered"]
    {
        assert!(metric.contains(message), "the metric misses {message:?}");
        assert!(source.contains(&format!("\"{message}\"")), "the code no longer logs {message:?}");
    }
}

#[test]
fn the_webhook_url_is_an_output_and_the_example_sets_every_required_variable() {
    let files = files();
    let outputs: BTreeSet<&str> = blocks(&files, "output").iter().map(|b| b.labels()[0].as_str()).collect();
    assert!(outputs.contains("webhook_url"));
    let required: BTreeSet<&str> = blocks(&files, "variable")
        .into_iter()
        .filter(|b| !b.body().attributes().any(|a| a.key() == "default"))
        .map(|b| b.labels()[0].as_str())
        .collect();
    assert_eq!(required, BTreeSet::from(["project"]));
    let example = std::fs::read_to_string(repo().join("terraform/terraform.tfvars.example")).unwrap();
    let example = hcl::parse(&example).expect("the example parses");
    let set: BTreeSet<&str> = example.attributes().map(|a| a.key()).collect();
    assert!(required.is_subset(&set));
    let declared: BTreeSet<&str> = blocks(&files, "variable").iter().map(|b| b.labels()[0].as_str()).collect();
    assert!(set.is_subset(&declared), "the example sets undeclared variables: {:?}", set.difference(&declared));
}
