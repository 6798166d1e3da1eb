//! Trigger definitions (`eventarc/triggers.toml`) bound to one environment's names (`eventarc/environments.toml`).
//! Pure parsing and validation; every error names the file, the trigger (or schedule) and the field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::runtime::cloudevent::{PUBSUB_PUBLISHED, STORAGE_FINALIZED};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    StorageFinalized,
    PubSubPublished,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StorageFinalized => STORAGE_FINALIZED,
            Self::PubSubPublished => PUBSUB_PUBLISHED,
        }
    }
}

/// What a trigger listens to, with the environment's real name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Bucket(String),
    Topic(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub max_delivery_attempts: u32,
    /// Real topic name.
    pub dead_letter_topic: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub name: String,
    pub destination: String,
    pub event_type: EventType,
    pub source: Source,
    /// The role the source was given by (`recordings`, `analysis-complete`, …).
    pub role: String,
    pub timeout: Duration,
    pub retry: Retry,
}

/// A scheduled message (Cloud Scheduler with a Pub/Sub target): at every slot of `cron` (five-field unix-cron,
/// UTC) one message with `data` as its body is published on `topic`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub name: String,
    pub cron: croner::Cron,
    /// Real topic name.
    pub topic: String,
    /// The role the topic was given by (`scheduled`).
    pub role: String,
    pub data: Option<serde_json::Value>,
}

impl Schedule {
    /// The first slot strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }
    /// The latest slot at or before `at`.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_previous_occurrence(&at, true).ok()
    }
    /// The message body: the data as compact JSON, or empty.
    pub fn body(&self) -> Vec<u8> {
        self.data.as_ref().map(|d| serde_json::to_vec(d).expect("json")).unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct Triggers {
    pub environment: String,
    pub project: String,
    pub triggers: Vec<Trigger>,
    pub schedules: Vec<Schedule>,
    /// Role → real name.
    pub buckets: BTreeMap<String, String>,
    pub topics: BTreeMap<String, String>,
    /// Function → the base URL it listens on, where the environment runs functions as separate processes
    /// (emulators); empty where a host runs them in process (embedded) or the platform knows them (gcp).
    pub functions: BTreeMap<String, String>,
}

impl Triggers {
    pub fn function_url(&self, function: &str) -> Option<&str> {
        self.functions.get(function).map(String::as_str)
    }

    pub fn for_bucket<'a>(&'a self, bucket: &'a str) -> impl Iterator<Item = &'a Trigger> + 'a {
        self.triggers.iter().filter(move |t| t.source == Source::Bucket(bucket.to_owned()))
    }
    pub fn for_topic<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a Trigger> + 'a {
        self.triggers.iter().filter(move |t| t.source == Source::Topic(topic.to_owned()))
    }
    pub fn schedule(&self, name: &str) -> Option<&Schedule> {
        self.schedules.iter().find(|s| s.name == name)
    }
    pub fn get(&self, name: &str) -> Option<&Trigger> {
        self.triggers.iter().find(|t| t.name == name)
    }
    pub fn bucket(&self, role: &str) -> Option<&str> {
        self.buckets.get(role).map(String::as_str)
    }
    pub fn topic(&self, role: &str) -> Option<&str> {
        self.topics.get(role).map(String::as_str)
    }

    /// Whether the environment names its resources after the project (`${project}` in environments.toml, as the
    /// `gcp` environment does, so that one file serves every project).
    pub fn needs_project(&self) -> bool {
        let mut names = self.buckets.values().chain(self.topics.values()).chain(std::iter::once(&self.project));
        names.any(|n| n.contains(PROJECT_PLACEHOLDER))
    }

    /// Every `${project}` in the environment's names replaced by `project` (Cloud Run gives each function
    /// `GOOGLE_CLOUD_PROJECT` through terraform; see `runtime::config`).
    pub fn bind_project(mut self, project: &str) -> Self {
        let bind = |s: &mut String| *s = s.replace(PROJECT_PLACEHOLDER, project);
        bind(&mut self.project);
        self.buckets.values_mut().chain(self.topics.values_mut()).for_each(bind);
        for t in &mut self.triggers {
            match &mut t.source {
                Source::Bucket(b) | Source::Topic(b) => bind(b),
            }
            bind(&mut t.retry.dead_letter_topic);
        }
        self.schedules.iter_mut().for_each(|s| bind(&mut s.topic));
        self
    }
}

/// What environments.toml writes where the project's id belongs.
pub const PROJECT_PLACEHOLDER: &str = "${project}";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionError {
    pub file: String,
    pub trigger: Option<String>,
    pub schedule: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(t) = &self.trigger {
            write!(f, ": trigger {t:?}")?;
        }
        if let Some(s) = &self.schedule {
            write!(f, ": schedule {s:?}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ", field {field:?}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for DefinitionError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggersFile {
    #[serde(rename = "trigger", default)]
    triggers: Vec<RawTrigger>,
    /// Checked field by field (`parse_schedule`), so that every error names the schedule.
    #[serde(rename = "schedule", default)]
    schedules: Vec<toml::Table>,
}

const SCHEDULE_FIELDS: [&str; 4] = ["name", "cron", "topic", "data"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    name: String,
    destination: String,
    event_type: String,
    bucket: Option<String>,
    topic: Option<String>,
    timeout_secs: Option<u64>,
    retry: RawRetry,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    min_backoff_secs: u64,
    max_backoff_secs: u64,
    max_delivery_attempts: u32,
    dead_letter_topic: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    project: String,
    #[serde(default)]
    buckets: BTreeMap<String, String>,
    #[serde(default)]
    topics: BTreeMap<String, String>,
    #[serde(default)]
    functions: BTreeMap<String, String>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Read `triggers.toml` and `environments.toml` from `dir` and bind them to `environment`.
pub fn load(dir: &Path, environment: &str) -> Result<Triggers, DefinitionError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| DefinitionError {
            file: path.display().to_string(),
            trigger: None,
            schedule: None,
            field: None,
            message: format!("cannot read: {e}"),
        })
    };
    let (t, e) = (read("triggers.toml")?, read("environments.toml")?);
    let label = |name: &str| dir.join(name).display().to_string();
    parse(&t, &label("triggers.toml"), &e, &label("environments.toml"), environment)
}

pub fn parse(
    triggers_toml: &str,
    triggers_file: &str,
    environments_toml: &str,
    environments_file: &str,
    environment: &str,
) -> Result<Triggers, DefinitionError> {
    let fail = |file: &str, trigger: Option<&str>, field: Option<&str>, message: String| DefinitionError {
        file: file.to_owned(),
        trigger: trigger.map(str::to_owned),
        schedule: None,
        field: field.map(str::to_owned),
        message,
    };
    let envs: BTreeMap<String, RawEnvironment> = toml::from_str(environments_toml)
        .map_err(|e| fail(environments_file, None, None, e.to_string().trim().replace('\n', " ")))?;
    let env = envs.get(environment).ok_or_else(|| {
        let known: Vec<&str> = envs.keys().map(String::as_str).collect();
        fail(environments_file, None, None, format!("no environment {environment:?} (defined: {})", known.join(", ")))
    })?;
    let file: TriggersFile = toml::from_str(triggers_toml)
        .map_err(|e| fail(triggers_file, None, None, e.to_string().trim().replace('\n', " ")))?;
    let mut triggers: Vec<Trigger> = Vec::new();
    for raw in file.triggers {
        let name = raw.name.as_str();
        let err = |field: &str, message: String| fail(triggers_file, Some(name), Some(field), message);
        if !valid_name(name) {
            return Err(err("name", "use 1-63 characters of a-z, 0-9 and '-'".into()));
        }
        if triggers.iter().any(|t| t.name == name) {
            return Err(err("name", "defined twice".into()));
        }
        if !valid_name(&raw.destination) {
            return Err(err("destination", "must name a function (a-z, 0-9, '-')".into()));
        }
        let bind = |map: &BTreeMap<String, String>, kind: &str, field: &str, role: &str| {
            map.get(role).cloned().ok_or_else(|| {
                let known: Vec<&str> = map.keys().map(String::as_str).collect();
                err(
                    field,
                    format!(
                        "{kind} role {role:?} is not bound in environment {environment:?} (bound: {})",
                        known.join(", ")
                    ),
                )
            })
        };
        let (event_type, source, role) = match (raw.event_type.as_str(), &raw.bucket, &raw.topic) {
            (STORAGE_FINALIZED, Some(b), None) => {
                (EventType::StorageFinalized, Source::Bucket(bind(&env.buckets, "bucket", "bucket", b)?), b.clone())
            }
            (STORAGE_FINALIZED, _, _) => {
                return Err(err("bucket", "a storage trigger needs a bucket and no topic".into()));
            }
            (PUBSUB_PUBLISHED, None, Some(t)) => {
                (EventType::PubSubPublished, Source::Topic(bind(&env.topics, "topic", "topic", t)?), t.clone())
            }
            (PUBSUB_PUBLISHED, _, _) => {
                return Err(err("topic", "a Pub/Sub trigger needs a topic and no bucket".into()));
            }
            (other, _, _) => {
                return Err(err(
                    "event_type",
                    format!("{other:?} is not supported (use {STORAGE_FINALIZED} or {PUBSUB_PUBLISHED})"),
                ));
            }
        };
        let r = &raw.retry;
        if r.min_backoff_secs == 0 || r.min_backoff_secs > r.max_backoff_secs || r.max_backoff_secs > 600 {
            return Err(err("retry.min_backoff_secs", "need 0 < min_backoff_secs <= max_backoff_secs <= 600".into()));
        }
        if !(5..=100).contains(&r.max_delivery_attempts) {
            return Err(err("retry.max_delivery_attempts", "Pub/Sub allows 5 to 100".into()));
        }
        let dead_letter_topic = bind(&env.topics, "topic", "retry.dead_letter_topic", &r.dead_letter_topic)?;
        let timeout = Duration::from_secs(raw.timeout_secs.unwrap_or(60));
        if timeout.is_zero() || timeout > Duration::from_secs(3600) {
            return Err(err("timeout_secs", "must be 1 to 3600".into()));
        }
        triggers.push(Trigger {
            name: raw.name.clone(),
            destination: raw.destination.clone(),
            event_type,
            source,
            role,
            timeout,
            retry: Retry {
                min_backoff: Duration::from_secs(r.min_backoff_secs),
                max_backoff: Duration::from_secs(r.max_backoff_secs),
                max_delivery_attempts: r.max_delivery_attempts,
                dead_letter_topic,
            },
        });
    }
    let mut schedules: Vec<Schedule> = Vec::new();
    for (i, table) in file.schedules.iter().enumerate() {
        let schedule =
            parse_schedule(table, i, &triggers, &env.topics, environment).map_err(|(label, field, message)| {
                DefinitionError {
                    file: triggers_file.to_owned(),
                    trigger: None,
                    schedule: Some(label),
                    field: Some(field),
                    message,
                }
            })?;
        if schedules.iter().any(|s| s.name == schedule.name) {
            let e = fail(triggers_file, None, Some("name"), "defined twice".into());
            return Err(DefinitionError { schedule: Some(schedule.name), ..e });
        }
        schedules.push(schedule);
    }
    Ok(Triggers {
        environment: environment.to_owned(),
        project: env.project.clone(),
        triggers,
        schedules,
        buckets: env.buckets.clone(),
        topics: env.topics.clone(),
        functions: env.functions.clone(),
    })
}

/// Cloud Scheduler's unix-cron: five fields, UTC.
fn parse_cron(text: &str) -> Result<croner::Cron, String> {
    let fields = text.split_whitespace().count();
    if fields != 5 {
        return Err(format!("{text:?} has {fields} fields: use five-field unix-cron (minute hour day month weekday)"));
    }
    let parser = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .build();
    let cron = parser.parse(text).map_err(|e| format!("{text:?} is not a valid cron expression: {e}"))?;
    let epoch = DateTime::<Utc>::from_timestamp(946_684_800, 0).expect("2000-01-01");
    cron.find_next_occurrence(&epoch, false).map_err(|_| format!("{text:?} never fires"))?;
    Ok(cron)
}

/// One `[[schedule]]` table; an error is (schedule label, field, message).
fn parse_schedule(
    table: &toml::Table,
    index: usize,
    triggers: &[Trigger],
    topics: &BTreeMap<String, String>,
    environment: &str,
) -> Result<Schedule, (String, String, String)> {
    let label = match table.get("name") {
        Some(toml::Value::String(name)) => name.clone(),
        _ => format!("#{}", index + 1),
    };
    let err = |field: &str, message: String| (label.clone(), field.to_owned(), message);
    if let Some(unknown) = table.keys().find(|k| !SCHEDULE_FIELDS.contains(&k.as_str())) {
        let message = format!("unknown field {unknown:?} (expected {})", SCHEDULE_FIELDS.join(", "));
        return Err((label, unknown.clone(), message));
    }
    let string = |field: &'static str, required: bool| match table.get(field) {
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(err(field, format!("must be a string, not {}", other.type_str()))),
        None if required => Err(err(field, "missing".into())),
        None => Ok(None),
    };
    let name = string("name", true)?.unwrap_or_default();
    if !valid_name(&name) {
        return Err(err("name", "use 1-63 characters of a-z, 0-9 and '-'".into()));
    }
    let cron = parse_cron(&string("cron", true)?.unwrap_or_default()).map_err(|m| err("cron", m))?;
    let role = string("topic", true)?.unwrap_or_default();
    let topic = topics.get(&role).cloned().ok_or_else(|| {
        let known: Vec<&str> = topics.keys().map(String::as_str).collect();
        err(
            "topic",
            format!("topic role {role:?} is not bound in environment {environment:?} (bound: {})", known.join(", ")),
        )
    })?;
    if !triggers.iter().any(|t| t.source == Source::Topic(topic.clone())) {
        return Err(err("topic", format!("no trigger listens to topic role {role:?}: its messages would be dropped")));
    }
    let data = match string("data", false)? {
        Some(text) => {
            Some(serde_json::from_str(&text).map_err(|e| err("data", format!("must be a JSON document: {e}")))?)
        }
        None => None,
    };
    Ok(Schedule { name, cron, topic, role, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRIGGERS: &str = include_str!("../../eventarc/triggers.toml");
    const ENVS: &str = include_str!("../../eventarc/environments.toml");

    #[test]
    fn the_gcp_environment_is_bound_to_the_project() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../eventarc");
        let gcp = load(&dir, "gcp").unwrap();
        assert!(gcp.needs_project());
        let bound = gcp.bind_project("acme-prod");
        assert!(!bound.needs_project());
        assert_eq!(bound.project, "acme-prod");
        assert_eq!(bound.bucket("recordings"), Some("acme-prod-callflow-recordings"));
        let t = bound.get("recording-finalized").unwrap();
        assert_eq!(t.source, Source::Bucket("acme-prod-callflow-recordings".into()));
        assert!(!t.retry.dead_letter_topic.contains('$'));
        assert!(bound.schedules.iter().all(|s| !s.topic.contains('$')));
        assert!(!load(&dir, "embedded").unwrap().needs_project());
    }

    #[test]
    fn the_repos_definitions_load_in_every_environment() {
        for env in ["embedded", "emulators", "gcp"] {
            let t = parse(TRIGGERS, "triggers.toml", ENVS, "environments.toml", env).unwrap();
            assert_eq!(t.triggers.len(), 5, "{env}");
            // The cleanup schedule publishes on the environment's `scheduled` topic, which a trigger listens to.
            let cleanup = t.schedule("cleanup").unwrap_or_else(|| panic!("{env}: no cleanup schedule"));
            assert_eq!(cleanup.topic, t.topic("scheduled").unwrap(), "{env}");
            assert_eq!(
                t.for_topic(&cleanup.topic).map(|t| t.destination.as_str()).collect::<Vec<_>>(),
                ["cleanup-scheduled"]
            );
            assert_eq!(cleanup.data.as_ref().unwrap()["jobs"][0], "retention", "{env}");
        }
        let t = parse(TRIGGERS, "triggers.toml", ENVS, "environments.toml", "embedded").unwrap();
        let on_rec: Vec<_> = t.for_bucket("recordings").map(|t| t.destination.as_str()).collect();
        assert_eq!(on_rec, ["on-audio-uploaded"]);
        assert_eq!(t.for_topic("analysis-complete").count(), 1);
        assert_eq!(t.for_bucket("elsewhere").count(), 0);
        // In the emulator topology every trigger's destination is a process with a URL.
        let t = parse(TRIGGERS, "triggers.toml", ENVS, "environments.toml", "emulators").unwrap();
        for trigger in &t.triggers {
            assert!(t.function_url(&trigger.destination).is_some(), "{} has no URL", trigger.destination);
        }
    }

    fn error(triggers: &str) -> String {
        parse(triggers, "eventarc/triggers.toml", ENVS, "eventarc/environments.toml", "embedded")
            .unwrap_err()
            .to_string()
    }

    const OK: &str = r#"
        [[trigger]]
        name = "t1"
        destination = "on-x"
        event_type = "google.cloud.storage.object.v1.finalized"
        bucket = "recordings"
        [trigger.retry]
        min_backoff_secs = 10
        max_backoff_secs = 600
        max_delivery_attempts = 5
        dead_letter_topic = "dead-letters"
    "#;

    #[test]
    fn invalid_definitions_say_file_trigger_and_field() {
        assert!(parse(OK, "f", ENVS, "e", "embedded").is_ok());
        let cases = [
            (
                OK.replace("\"recordings\"", "\"recordingz\""),
                r#"trigger "t1", field "bucket": bucket role "recordingz" is not bound"#,
            ),
            (
                OK.replace("max_delivery_attempts = 5", "max_delivery_attempts = 3"),
                r#"field "retry.max_delivery_attempts""#,
            ),
            (OK.replace("min_backoff_secs = 10", "min_backoff_secs = 700"), r#"field "retry.min_backoff_secs""#),
            (OK.replace("storage.object.v1.finalized", "storage.object.v1.deleted"), r#"field "event_type""#),
            (OK.replace("bucket = \"recordings\"", "topic = \"crm-retry\""), r#"field "bucket": a storage trigger"#),
            (OK.replace("\"dead-letters\"", "\"nowhere\""), r#"field "retry.dead_letter_topic""#),
            (OK.replace("name = \"t1\"", "name = \"T 1\""), r#"field "name""#),
            (format!("{OK}{}", OK), r#"trigger "t1", field "name": defined twice"#),
        ];
        for (text, expected) in cases {
            let e = error(&text);
            assert!(e.starts_with("eventarc/triggers.toml"), "{e}");
            assert!(e.contains(expected), "expected {expected:?} in {e}");
        }
        let e = error(&OK.replace("destination", "destinaton"));
        assert!(e.starts_with("eventarc/triggers.toml") && e.contains("destinaton"), "{e}");
        let e = parse(OK, "f", ENVS, "eventarc/environments.toml", "staging").unwrap_err().to_string();
        assert!(e.contains("no environment \"staging\""), "{e}");
    }

    /// A trigger on the `scheduled` topic and one schedule publishing on it.
    const SCHEDULED: &str = r#"
        [[trigger]]
        name = "cleanup-scheduled"
        destination = "cleanup-scheduled"
        event_type = "google.cloud.pubsub.topic.v1.messagePublished"
        topic = "scheduled"
        [trigger.retry]
        min_backoff_secs = 10
        max_backoff_secs = 600
        max_delivery_attempts = 5
        dead_letter_topic = "dead-letters"

        [[schedule]]
        name = "cleanup"
        cron = "*/15 * * * *"
        topic = "scheduled"
        data = '{"jobs": ["retention"]}'
    "#;

    #[test]
    fn schedules_are_five_field_utc_cron_on_a_listened_topic() {
        let t = parse(SCHEDULED, "f", ENVS, "e", "gcp").unwrap();
        let s = t.schedule("cleanup").unwrap();
        assert_eq!((s.topic.as_str(), s.role.as_str()), ("callflow-scheduled", "scheduled"));
        assert_eq!(s.data, Some(serde_json::json!({"jobs": ["retention"]})));
        assert_eq!(s.body(), br#"{"jobs":["retention"]}"#);
        let at = |text: &str| DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc);
        assert_eq!(s.next_after(at("2025-03-01T10:00:00Z")), Some(at("2025-03-01T10:15:00Z")));
        assert_eq!(s.next_after(at("2025-03-01T10:14:59.5Z")), Some(at("2025-03-01T10:15:00Z")));
        assert_eq!(s.latest_at_or_before(at("2025-03-01T13:07:00Z")), Some(at("2025-03-01T13:00:00Z")));
        assert_eq!(s.latest_at_or_before(at("2025-03-01T13:15:00Z")), Some(at("2025-03-01T13:15:00Z")));
        // Day of month and day of week restrict together as in unix-cron (either matches).
        let t = parse(&SCHEDULED.replace("*/15 * * * *", "30 2 1 * MON"), "f", ENVS, "e", "gcp").unwrap();
        let s = t.schedule("cleanup").unwrap();
        assert_eq!(s.next_after(at("2025-03-01T03:00:00Z")), Some(at("2025-03-03T02:30:00Z")), "Monday the 3rd");
        // Without data, the body is empty.
        let t = parse(&SCHEDULED.replace("data = '{\"jobs\": [\"retention\"]}'", ""), "f", ENVS, "e", "gcp").unwrap();
        assert_eq!((t.schedules[0].data.clone(), t.schedules[0].body()), (None, Vec::new()));
    }

    #[test]
    fn invalid_schedules_say_file_schedule_and_field() {
        let second = "[[schedule]]\nname = \"cleanup\"\ncron = \"0 * * * *\"\ntopic = \"scheduled\"\n";
        let cases = [
            (SCHEDULED.replace("cron = ", "kron = "), r#"schedule "cleanup", field "kron": unknown field"#),
            (
                SCHEDULED.replace("*/15 * * * *", "*/15 * * *"),
                r#"schedule "cleanup", field "cron": "*/15 * * *" has 4"#,
            ),
            (SCHEDULED.replace("*/15 * * * *", "0 */15 * * * *"), r#"schedule "cleanup", field "cron""#),
            (
                SCHEDULED.replace("*/15 * * * *", "61 * * * *"),
                r#"schedule "cleanup", field "cron": "61 * * * *" is not"#,
            ),
            (SCHEDULED.replace("*/15 * * * *", "@hourly"), r#"schedule "cleanup", field "cron""#),
            (
                SCHEDULED.replace("*/15 * * * *", "0 0 30 2 *"),
                r#"schedule "cleanup", field "cron": "0 0 30 2 *" never"#,
            ),
            (
                SCHEDULED.replace("topic = \"scheduled\"\n        data", "topic = \"schedule\"\n        data"),
                r#"schedule "cleanup", field "topic": topic role "schedule" is not bound"#,
            ),
            (
                SCHEDULED.replace("topic = \"scheduled\"\n        data", "topic = \"crm-retry\"\n        data"),
                r#"schedule "cleanup", field "topic": no trigger listens to topic role "crm-retry""#,
            ),
            (
                SCHEDULED.replace(r#"["retention"]}"#, r#"["retention"]"#),
                r#"schedule "cleanup", field "data": must be a JSON"#,
            ),
            (SCHEDULED.replace("data = '", "data = 7 # '"), r#"schedule "cleanup", field "data": must be a string"#),
            (format!("{SCHEDULED}{second}"), r#"schedule "cleanup", field "name": defined twice"#),
            (SCHEDULED.replace("name = \"cleanup\"", "name = \"Clean Up\""), r#"schedule "Clean Up", field "name""#),
            (SCHEDULED.replace("name = \"cleanup\"", ""), r##"schedule "#1", field "name": missing"##),
            (SCHEDULED.replace("cron = \"*/15 * * * *\"", ""), r#"schedule "cleanup", field "cron": missing"#),
        ];
        for (text, expected) in cases {
            let e = error(&text);
            assert!(e.starts_with("eventarc/triggers.toml: schedule"), "{e}");
            assert!(e.contains(expected), "expected {expected:?} in {e}");
        }
        // A misspelt table is refused by the file's own shape.
        let e = error(&SCHEDULED.replace("[[schedule]]", "[[schedules]]"));
        assert!(e.starts_with("eventarc/triggers.toml") && e.contains("schedules"), "{e}");
    }
}
