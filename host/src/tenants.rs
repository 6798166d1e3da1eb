//! `callflow tenants list|show|add|update`: the tenants file for an operator. Reads show what the functions parse
//! (secret references, never secret values, and whether each reference resolves). Writes edit the file with
//! `toml_edit`, so its comments and layout stay, then load the whole new document exactly as the functions do
//! (`FileTenants::parse_in`: unknown fields, `Tenant::validate`, duplicate ids, workflow files) and write only a
//! document that loads — atomically, and based on the version that was read. The functions follow the file
//! (`ReloadingTenants`), so a write is served without a restart.
//!
//! Where the file is: `CALLFLOW_TENANTS` (the embedded mode and the emulators), or on Google Cloud the Secret
//! Manager secret every function mounts (`--secret projects/P/secrets/S` or `CALLFLOW_TENANTS_SECRET`): its latest
//! version is read and an edit is added as a new version.
//!
//! Exit status: 0 done (or nothing to change), 1 the file or the secret could not be read or written, 2 the input
//! is invalid (the new document would not load, an unknown or existing id, a malformed `--set`): nothing written.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use callflow::adapters::local_secrets::LocalSecrets;
use callflow::adapters::secret_manager::{self, FileVersion, SecretManagerFile, SecretManagerSecrets, SecretsByScheme};
use callflow::adapters::tenants_file::{self, FileTenants};
use callflow::domain::TenantId;
use callflow::domain::tenant::{SecretRef, Tenant};
use callflow::ports::{PortError, PortResult, Secret, SecretSource, TenantDirectory};
use callflow::runtime::config::parse;
use clap::{Args, Subcommand};
use serde_json::{Value as Json, json};
use toml_edit::{ArrayOfTables, DocumentMut, InlineTable, Item, Table, TableLike, Value};

/// Where the functions on Google Cloud find the tenants file (terraform/main.tf mounts the secret there, alone):
/// the directory `workflow_file`s and `file:` secrets of a Secret Manager tenants file resolve against.
const GOOGLE_MOUNT_DIR: &str = "/etc/callflow/tenants";

#[derive(Args)]
pub struct Source {
    /// The tenants file is this Secret Manager secret, projects/P/secrets/S (on Google Cloud every function mounts
    /// its latest version): read its latest version, add an edit as a new version.
    #[arg(long, env = "CALLFLOW_TENANTS_SECRET", value_name = "projects/P/secrets/S")]
    secret: Option<String>,
}

#[derive(Args)]
pub struct WriteOpts {
    /// Validate and print the change, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the change as JSON (before and after).
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum TenantsAction {
    /// Every tenant: id, name, CallRail company ids, CRM provider, forms on or off.
    List {
        #[command(flatten)]
        source: Source,
        #[arg(long)]
        json: bool,
    },
    /// One tenant's whole configuration as the functions parse it (secret references, never their values), and
    /// whether each secret reference resolves.
    Show {
        /// The tenant's id.
        id: String,
        #[command(flatten)]
        source: Source,
        #[arg(long)]
        json: bool,
    },
    /// Add a tenant (an existing id is refused): flags build its table, --from starts from a file.
    Add(Box<AddArgs>),
    /// Change a tenant's settings (--set PATH=VALUE, --unset PATH, --workflow-file); changing its id is refused.
    ///
    /// PATH is a dotted key inside the tenant (`retention_days=90`, `callrail.company_ids=["COM1","COM2"]`,
    /// `crm.url="https://…"`); VALUE is TOML (a bare word that is not TOML is taken as a string). Unsets are
    /// applied first, then sets in order.
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true).args(["sets", "unsets", "workflow_file"])))]
    Update(UpdateArgs),
}

#[derive(Args)]
pub struct AddArgs {
    /// The new tenant's id: lower-case letters, digits and `-` (it is in the webhook URLs and every stored key).
    id: String,
    /// The company's name (required unless --from has one).
    #[arg(long)]
    name: Option<String>,
    /// CallRail account id (ACC…), used in API paths.
    #[arg(long)]
    callrail_account: Option<String>,
    /// A CallRail company id (COM… or legacy numeric) whose webhooks the tenant receives (repeatable).
    #[arg(long = "callrail-company", value_name = "COMPANY")]
    callrail_companies: Vec<String>,
    /// A secret reference to a CallRail signing key (repeatable, at most 2: the current one and the one rotated out).
    #[arg(long = "callrail-signing-key", value_name = "REF")]
    callrail_signing_keys: Vec<String>,
    /// A secret reference to the CallRail API key (recording downloads, reconciliation).
    #[arg(long, value_name = "REF")]
    callrail_api_key: Option<String>,
    /// A secret reference to a forms signing secret, `whsec_…` (repeatable, at most 2). Turns forms on.
    #[arg(long = "forms-signing-key", value_name = "REF")]
    forms_signing_keys: Vec<String>,
    /// Accepted form submissions per minute (default 120).
    #[arg(long)]
    forms_per_minute: Option<u32>,
    /// hubspot, salesforce, pipedrive or webhook.
    #[arg(long)]
    crm_provider: Option<String>,
    /// A secret reference to the CRM credential (token, connected app JSON, or the webhook's `whsec_…`).
    #[arg(long, value_name = "REF")]
    crm_credential: Option<String>,
    /// The CRM's URL: required for salesforce (My Domain) and webhook (the receiver); an API base otherwise.
    #[arg(long)]
    crm_url: Option<String>,
    /// Per-request time limit of a CRM push, in milliseconds (default 10000).
    #[arg(long)]
    crm_timeout_ms: Option<u64>,
    /// A field mapping, LEAD_FIELD=CRM_PROPERTY (repeatable).
    #[arg(long = "crm-field", value_name = "OURS=THEIRS", value_parser = parse_pair)]
    crm_fields: Vec<(String, String)>,
    /// Days calls are kept (default 365).
    #[arg(long)]
    retention_days: Option<u32>,
    /// The workflow (spam gate, service area, minimum score, notifications) as a JSON file. Referenced relative to
    /// the tenants file; inlined as [tenant.workflow] in a Secret Manager tenants file (nothing else is mounted).
    #[arg(long)]
    workflow_file: Option<PathBuf>,
    /// Start from this TOML file: one tenant's table, in the shape of one [[tenant]] (the flags override it).
    #[arg(long, value_name = "FILE.toml")]
    from: Option<PathBuf>,
    #[command(flatten)]
    write: WriteOpts,
    #[command(flatten)]
    source: Source,
}

#[derive(Args)]
pub struct UpdateArgs {
    /// The tenant's id.
    id: String,
    /// PATH=VALUE: set a field (repeatable).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    sets: Vec<String>,
    /// PATH: remove a field or a section (repeatable).
    #[arg(long = "unset", value_name = "PATH")]
    unsets: Vec<String>,
    /// Replace the workflow with this JSON file (see `add --workflow-file`).
    #[arg(long)]
    workflow_file: Option<PathBuf>,
    #[command(flatten)]
    write: WriteOpts,
    #[command(flatten)]
    source: Source,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    let (a, b) = s.split_once('=').ok_or("expected OURS=THEIRS")?;
    Ok((a.trim().to_owned(), b.trim().to_owned()))
}

/// The operator's input is wrong: exit 2, nothing written.
#[derive(Debug)]
struct Invalid(String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

fn invalid(message: impl Into<String>) -> anyhow::Error {
    Invalid(message.into()).into()
}

pub async fn run(action: TenantsAction) -> anyhow::Result<ExitCode> {
    let result = match action {
        TenantsAction::List { source, json } => list(source, json).await,
        TenantsAction::Show { id, source, json } => show(&id, source, json).await,
        TenantsAction::Add(args) => add(*args).await,
        TenantsAction::Update(args) => update(args).await,
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => match e.downcast_ref::<Invalid>() {
            Some(Invalid(message)) => {
                eprintln!("callflow tenants: {message}");
                Ok(ExitCode::from(2))
            }
            None => Err(e),
        },
    }
}

/// Where the tenants file is kept, and how its references resolve there.
struct Target {
    store: Store,
    /// The directory the functions resolve `workflow_file`s and `file:` secrets against.
    base_dir: PathBuf,
    /// The functions' own secret source for this environment.
    secrets: Arc<dyn SecretSource>,
}

enum Store {
    File(PathBuf),
    Secret(SecretManagerFile),
}

/// Secret Manager when no client could be made: every `gcp-sm:` reference fails with the reason.
struct Unreachable(String);

#[async_trait::async_trait]
impl SecretSource for Unreachable {
    async fn secret(&self, reference: &SecretRef) -> PortResult<Secret> {
        Err(PortError::retryable(format!("secret {}: {}", reference.0, self.0)))
    }
}

/// One version of the tenants file as read.
struct Snapshot {
    text: String,
    /// The secret version it is (Secret Manager only).
    version: Option<FileVersion>,
}

impl Target {
    async fn open(source: Source) -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok();
        let environment: String = parse("CALLFLOW_ENVIRONMENT", var("CALLFLOW_ENVIRONMENT"), "embedded".to_owned())?;
        let secret = source.secret.filter(|s| !s.trim().is_empty());
        // Secret Manager answers `gcp-sm:` references wherever the functions have it (outside the embedded mode)
        // and always for a tenants file kept there, which only functions on Google Cloud read.
        let client = if environment != "embedded" || secret.is_some() {
            Some(secret_manager::operator_client().await)
        } else {
            None
        };
        let (store, base_dir) = match secret {
            Some(name) => {
                let client = match &client {
                    Some(Ok(client)) => client.clone(),
                    Some(Err(e)) => anyhow::bail!("{e:#}"),
                    None => unreachable!("a client is made whenever a secret is named"),
                };
                let file = SecretManagerFile::new(client, &name).map_err(|e| invalid(format!("--secret: {e}")))?;
                (Store::Secret(file), PathBuf::from(GOOGLE_MOUNT_DIR))
            }
            None if environment == "gcp" => {
                return Err(invalid(
                    "on Google Cloud (CALLFLOW_ENVIRONMENT=gcp) the functions read the tenants file from Secret \
                     Manager: give --secret projects/P/secrets/S or set CALLFLOW_TENANTS_SECRET",
                ));
            }
            None => {
                let path: PathBuf =
                    parse("CALLFLOW_TENANTS", var("CALLFLOW_TENANTS"), PathBuf::from("fixtures/tenants.toml"))?;
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                (Store::File(path), dir)
            }
        };
        // Without a client (no credentials here) the file can still be listed and edited; its `gcp-sm:`
        // references then say why they cannot be checked.
        let secret_manager = client.map(|c| match c {
            Ok(c) => Arc::new(SecretManagerSecrets::with_client(c)) as Arc<dyn SecretSource>,
            Err(e) => Arc::new(Unreachable(format!("{e:#}"))) as Arc<dyn SecretSource>,
        });
        let secrets = Arc::new(SecretsByScheme::new(LocalSecrets::new(&base_dir), secret_manager));
        Ok(Self { store, base_dir, secrets })
    }

    fn describe(&self) -> String {
        match &self.store {
            Store::File(path) => path.display().to_string(),
            Store::Secret(s) => format!("secret {}", s.secret()),
        }
    }

    async fn read(&self) -> anyhow::Result<Snapshot> {
        match &self.store {
            Store::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read tenants file {}: {e}", path.display()))?;
                Ok(Snapshot { text, version: None })
            }
            Store::Secret(s) => {
                let v = s.read_latest().await?;
                Ok(Snapshot { text: v.text.clone(), version: Some(v) })
            }
        }
    }

    /// Write `text` over the version `read` came from; the new secret version's name, if any.
    async fn write(&self, read: &Snapshot, text: &str) -> anyhow::Result<Option<String>> {
        match (&self.store, &read.version) {
            (Store::File(path), _) => tenants_file::replace_file(path, &read.text, text).map(|()| None),
            (Store::Secret(s), Some(v)) => s.add_version(v, text).await.map(Some),
            (Store::Secret(_), None) => unreachable!("a secret's snapshot has its version"),
        }
    }

    /// Load a whole document as the functions would, or say what is wrong with it (tenant and field).
    /// `name` says which document line numbers are in.
    fn load(&self, text: &str, name: &str) -> Result<FileTenants, String> {
        FileTenants::parse_in(text, &self.base_dir).map_err(|e| {
            let mut message = explain(&e, text, name);
            if matches!(self.store, Store::Secret(_)) && message.contains("workflow_file") {
                message.push_str(&format!(
                    " (on Google Cloud only tenants.toml is mounted in {GOOGLE_MOUNT_DIR}: give --workflow-file to \
                     inline the workflow)"
                ));
            }
            message
        })
    }

    async fn load_current(&self) -> anyhow::Result<(Snapshot, FileTenants)> {
        let snapshot = self.read().await?;
        let tenants = self
            .load(&snapshot.text, "the file")
            .map_err(|e| anyhow::anyhow!("the tenants file ({}) does not load: {e}", self.describe()))?;
        Ok((snapshot, tenants))
    }
}

async fn list(source: Source, json: bool) -> anyhow::Result<()> {
    let target = Target::open(source).await?;
    let (_, tenants) = target.load_current().await?;
    let all = tenants.list().await.map_err(|e| anyhow::anyhow!(e.message))?;
    let rows: Vec<Json> = all
        .iter()
        .map(|t| {
            json!({
                "id": t.id.as_str(),
                "name": t.name,
                "callrail_company_ids": t.callrail.as_ref().map(|c| c.company_ids.clone()).unwrap_or_default(),
                "crm_provider": t.crm.as_ref().map(|c| c.provider.as_str()),
                "forms": t.forms.is_some(),
                "forms_signing_keys": t.forms.as_ref().map_or(0, |f| f.signing_keys.len()),
            })
        })
        .collect();
    if json {
        println!("{}", json!({"source": target.describe(), "tenants": rows}));
        return Ok(());
    }
    let s = |v: &Json| v.as_str().unwrap_or("-").to_owned();
    let table: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let companies: Vec<String> = r["callrail_company_ids"].as_array().into_iter().flatten().map(&s).collect();
            let companies = if companies.is_empty() { "-".to_owned() } else { companies.join(", ") };
            [
                s(&r["id"]),
                s(&r["name"]),
                companies,
                s(&r["crm_provider"]),
                forms_state(&r["forms"], &r["forms_signing_keys"]),
            ]
        })
        .collect();
    let header = ["id", "name", "callrail companies", "crm", "forms"].map(str::to_owned);
    let rows: Vec<Vec<String>> = std::iter::once(&header).chain(&table).map(|r| r.to_vec()).collect();
    print!("{}", crate::text_table::aligned(&rows, |_, _| false));
    println!("{} tenant(s) in {}", table.len(), target.describe());
    Ok(())
}

/// `on`, `off`, or `on (no key)`: a forms section without a key refuses every form (on-webhook fails closed).
fn forms_state(on: &Json, keys: &Json) -> String {
    match (on.as_bool(), keys.as_u64()) {
        (Some(true), Some(0)) => "on (no key)",
        (Some(true), _) => "on",
        _ => "off",
    }
    .to_owned()
}

async fn show(id: &str, source: Source, json: bool) -> anyhow::Result<()> {
    let target = Target::open(source).await?;
    let (snapshot, tenants) = target.load_current().await?;
    let tenant_id = TenantId::parse(id).map_err(|e| invalid(format!("{e}")))?;
    let tenant = tenants
        .tenant(&tenant_id)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?
        .ok_or_else(|| invalid(format!("no tenant {id:?} in {}", target.describe())))?;
    // Loading replaced `workflow_file` with the document it names; say where it came from.
    let workflow_file = snapshot.text.parse::<DocumentMut>().ok().and_then(|doc| {
        let tenants = doc.get("tenant")?.as_array_of_tables()?;
        let t = tenants.iter().find(|t| t.get("id").and_then(Item::as_str) == Some(id))?;
        t.get("workflow_file").and_then(Item::as_str).map(str::to_owned)
    });
    let checks = check_secrets(&target, &tenant).await;
    let config = serde_json::to_value(&*tenant)?;
    if json {
        let secrets: Vec<Json> = checks
            .iter()
            .map(|c| json!({"field": c.field, "reference": c.reference.0, "ok": c.error.is_none(), "error": c.error}))
            .collect();
        println!(
            "{}",
            json!({"source": target.describe(), "tenant": config, "workflow_file": workflow_file, "secrets": secrets})
        );
        return Ok(());
    }
    println!("# tenant {id} in {}, as the functions parse it (defaults filled in)", target.describe());
    if let Some(f) = &workflow_file {
        println!("# workflow from workflow_file = {f:?}");
    }
    match toml::to_string_pretty(&*tenant) {
        Ok(text) => print!("{text}"),
        // Every field has a TOML form today; JSON keeps `show` working should one not.
        Err(_) => println!("{}", serde_json::to_string_pretty(&config)?),
    }
    println!();
    println!("# secret references (values are never shown)");
    let width = checks.iter().map(|c| c.field.len()).max().unwrap_or(0);
    let ref_width = checks.iter().map(|c| c.reference.0.len()).max().unwrap_or(0);
    for c in &checks {
        let verdict = match &c.error {
            None => "ok".to_owned(),
            Some(e) => format!("does not resolve: {e}"),
        };
        println!("{:<width$}  {:<ref_width$}  {verdict}", c.field, c.reference.0);
    }
    if checks.is_empty() {
        println!("(none)");
    }
    Ok(())
}

/// One secret reference of a tenant and whether it resolves (the error, never the value).
struct SecretCheck {
    field: String,
    reference: SecretRef,
    error: Option<String>,
}

/// Every secret reference of a tenant, by the field that holds it.
fn secret_refs(t: &Tenant) -> Vec<(String, SecretRef)> {
    let mut refs = Vec::new();
    if let Some(cr) = &t.callrail {
        for (i, r) in cr.signing_keys.iter().enumerate() {
            refs.push((format!("callrail.signing_keys[{i}]"), r.clone()));
        }
        if let Some(r) = &cr.api_key {
            refs.push(("callrail.api_key".to_owned(), r.clone()));
        }
    }
    if let Some(forms) = &t.forms {
        for (i, r) in forms.signing_keys.iter().enumerate() {
            refs.push((format!("forms.signing_keys[{i}]"), r.clone()));
        }
    }
    if let Some(crm) = &t.crm {
        refs.push(("crm.credential".to_owned(), crm.credential.clone()));
    }
    for (i, rule) in t.workflow.notifications.iter().enumerate() {
        if let Some(slack) = &rule.slack {
            refs.push((format!("workflow.notifications[{i}].slack.webhook"), slack.webhook.clone()));
        }
        if let Some(email) = &rule.email {
            refs.push((format!("workflow.notifications[{i}].email.api_key"), email.api_key.clone()));
        }
    }
    refs
}

async fn check_secrets(target: &Target, t: &Tenant) -> Vec<SecretCheck> {
    let mut checks = Vec::new();
    for (field, reference) in secret_refs(t) {
        // The value is dropped here: only whether it resolved leaves this function.
        let resolved =
            tokio::time::timeout(std::time::Duration::from_secs(20), target.secrets.secret(&reference)).await;
        let error = match resolved {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.message),
            Err(_) => Some("no answer within 20 s".to_owned()),
        };
        checks.push(SecretCheck { field, reference, error });
    }
    checks
}

async fn add(args: AddArgs) -> anyhow::Result<()> {
    let target = Target::open(args.source).await?;
    let snapshot = target.read().await?;
    let mut doc = parse_document(&target, &snapshot.text)?;
    TenantId::parse(&args.id).map_err(|e| invalid(format!("{e}")))?;
    if position(&doc, &args.id)?.is_some() {
        return Err(invalid(format!(
            "tenant {:?} already exists in {}: use `callflow tenants update`",
            args.id,
            target.describe()
        )));
    }

    let mut tenant = Table::new();
    tenant.insert("id", toml_edit::value(&args.id));
    if let Some(from) = &args.from {
        let from = from_table(from, &args.id)?;
        for (key, item) in from.iter().filter(|(key, _)| *key != "id") {
            // The key as written there, so the comments above it come along.
            let key = from.key(key).cloned().unwrap_or_else(|| toml_edit::Key::new(key));
            tenant.insert_formatted(&key, item.clone());
        }
    }
    if args.name.is_none() && !tenant.contains_key("name") {
        return Err(invalid("a tenant needs a name: give --name (or a `name` in --from)"));
    }
    let string = |s: &str| Value::from(s);
    let strings = |v: &[String]| Value::Array(v.iter().map(String::as_str).collect());
    let number = |n: u32| Value::from(i64::from(n));
    let mut sets: Vec<(&[&str], Option<Value>)> = vec![
        (&["name"], args.name.as_deref().map(string)),
        (&["retention_days"], args.retention_days.map(number)),
        (&["callrail", "account_id"], args.callrail_account.as_deref().map(string)),
        (&["callrail", "company_ids"], Some(&args.callrail_companies).filter(|v| !v.is_empty()).map(|v| strings(v))),
        (
            &["callrail", "signing_keys"],
            Some(&args.callrail_signing_keys).filter(|v| !v.is_empty()).map(|v| strings(v)),
        ),
        (&["callrail", "api_key"], args.callrail_api_key.as_deref().map(string)),
        (&["forms", "signing_keys"], Some(&args.forms_signing_keys).filter(|v| !v.is_empty()).map(|v| strings(v))),
        (&["forms", "per_minute"], args.forms_per_minute.map(number)),
        (&["crm", "provider"], args.crm_provider.as_deref().map(string)),
        (&["crm", "credential"], args.crm_credential.as_deref().map(string)),
        (&["crm", "url"], args.crm_url.as_deref().map(string)),
    ];
    let timeout = args.crm_timeout_ms.map(|ms| i64::try_from(ms).map(Value::from)).transpose();
    sets.push((&["crm", "timeout_ms"], timeout.map_err(|_| invalid("--crm-timeout-ms is too large"))?));
    let mut paths: Vec<(Vec<String>, Value)> = sets
        .into_iter()
        .filter_map(|(path, value)| Some((path.iter().map(|k| k.to_string()).collect(), value?)))
        .collect();
    // A lead field name is taken as it is, dots and all: it is one key.
    for (ours, theirs) in &args.crm_fields {
        paths.push((vec!["crm".into(), "field_mapping".into(), ours.clone()], string(theirs)));
    }
    for (keys, value) in paths {
        set_in(&mut tenant, false, &keys, "", value).map_err(|e| invalid(format!("tenant {}: {e}", args.id)))?;
    }
    if let Some(file) = &args.workflow_file {
        set_workflow(&target, &mut tenant, file)?;
    }

    one_workflow(&tenant, &args.id)?;

    // New tables go after every table already in the file, in the order they were built.
    let after = max_position(doc.as_table()) + 1;
    set_positions(&mut tenant, after);
    let tenants = tenants_mut(&mut doc)?;
    if !tenants.is_empty() {
        tenant.decor_mut().set_prefix("\n");
    }
    tenants.push(tenant);
    finish(&target, &snapshot, doc, &args.id, "add", &args.write).await
}

async fn update(args: UpdateArgs) -> anyhow::Result<()> {
    let target = Target::open(args.source).await?;
    let snapshot = target.read().await?;
    let mut doc = parse_document(&target, &snapshot.text)?;
    let Some(index) = position(&doc, &args.id)? else {
        return Err(invalid(format!("no tenant {:?} in {}", args.id, target.describe())));
    };
    let mut edits: Vec<(Vec<String>, Option<Value>)> = Vec::new();
    for path in &args.unsets {
        edits.push((parse_path(path)?, None));
    }
    for arg in &args.sets {
        let (path, raw) = arg.split_once('=').ok_or_else(|| invalid(format!("--set {arg:?}: expected PATH=VALUE")))?;
        edits.push((parse_path(path)?, Some(parse_value(raw))));
    }
    let tenant = tenants_mut(&mut doc)?.get_mut(index).expect("the index was just found");
    for (keys, value) in edits {
        if keys.first().map(String::as_str) == Some("id") {
            return Err(invalid(format!(
                "tenant {}: changing a tenant's id is refused (it is in its webhook URLs and every stored key): add a \
                 new tenant instead",
                args.id
            )));
        }
        let result = match value {
            Some(value) => set_in(tenant, false, &keys, "", value),
            None => unset_in(tenant, &keys, ""),
        };
        result.map_err(|e| invalid(format!("tenant {}: {e}", args.id)))?;
    }
    if let Some(file) = &args.workflow_file {
        set_workflow(&target, tenant, file)?;
    }
    one_workflow(tenant, &args.id)?;
    finish(&target, &snapshot, doc, &args.id, "update", &args.write).await
}

/// Validate the edited document as the functions will load it, report the change, and write it unless this is a
/// dry run. Invalid: nothing written, exit 2.
async fn finish(
    target: &Target,
    snapshot: &Snapshot,
    doc: DocumentMut,
    id: &str,
    action: &str,
    opts: &WriteOpts,
) -> anyhow::Result<()> {
    let text = doc.to_string();
    let tenants = target.load(&text, "the edited file").map_err(|e| invalid(format!("{e}; nothing written")))?;
    let tenant_id = TenantId::parse(id).map_err(|e| invalid(format!("{e}")))?;
    let tenant = tenants.tenant(&tenant_id).await.map_err(|e| anyhow::anyhow!(e.message))?.expect("just edited");
    // A secret may well be created after the tenant that references it: a warning, not a refusal.
    let warnings: Vec<String> = check_secrets(target, &tenant)
        .await
        .into_iter()
        .filter_map(|c| {
            c.error.map(|e| format!("tenant {id}: {} = {:?} does not resolve (yet): {e}", c.field, c.reference.0))
        })
        .collect();
    let before = tenant_text(&snapshot.text, id);
    let after = tenant_text(&text, id);
    let diff = diff_lines(before.as_deref().unwrap_or(""), after.as_deref().unwrap_or(""));
    let changed = text != snapshot.text;
    let version = if changed && !opts.dry_run { target.write(snapshot, &text).await? } else { None };
    let written = changed && !opts.dry_run;

    if opts.json {
        let as_json = |t: &Option<String>| t.as_deref().and_then(table_json);
        println!(
            "{}",
            json!({
                "action": action, "tenant": id, "target": target.describe(), "dry_run": opts.dry_run,
                "changed": changed, "written": written, "version": version,
                "before": as_json(&before), "after": as_json(&after), "diff": diff, "warnings": warnings,
            })
        );
    } else {
        for line in &diff {
            println!("{line}");
        }
        let done = if action == "add" { "added" } else { "updated" };
        let what = match (&version, &snapshot.version) {
            (Some(new), Some(old)) => format!(
                "{}: new version {new} (was {}); the functions pick it up when Cloud Run refreshes their mounted file",
                target.describe(),
                old.version
            ),
            _ => target.describe(),
        };
        if !changed {
            println!("tenant {id}: no change; nothing written");
        } else if opts.dry_run {
            println!("dry run: tenant {id} would be {done} in {what} (valid; nothing written)");
        } else {
            println!("tenant {id} {done} in {what}");
        }
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

/// The stored text as an editable document; a file that is not TOML at all cannot be edited.
fn parse_document(target: &Target, text: &str) -> anyhow::Result<DocumentMut> {
    text.parse::<DocumentMut>().map_err(|e| {
        anyhow::anyhow!("the tenants file ({}) is not valid TOML, fix it by hand first: {e}", target.describe())
    })
}

/// The [[tenant]] array, created when the file has none yet.
fn tenants_mut(doc: &mut DocumentMut) -> anyhow::Result<&mut ArrayOfTables> {
    doc.entry("tenant")
        .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or_else(|| {
            anyhow::anyhow!("the tenants file's `tenant` is not a list of [[tenant]] tables: edit it by hand")
        })
}

/// Where the tenant `id` is in the [[tenant]] array.
fn position(doc: &DocumentMut, id: &str) -> anyhow::Result<Option<usize>> {
    match doc.get("tenant") {
        None => Ok(None),
        Some(item) => {
            let tenants = item.as_array_of_tables().ok_or_else(|| {
                anyhow::anyhow!("the tenants file's `tenant` is not a list of [[tenant]] tables: edit it by hand")
            })?;
            Ok(tenants.iter().position(|t| t.get("id").and_then(Item::as_str) == Some(id)))
        }
    }
}

/// A dotted key inside the tenant (`crm.url`, `crm.field_mapping."first_name"`).
fn parse_path(path: &str) -> anyhow::Result<Vec<String>> {
    let keys = toml_edit::Key::parse(path.trim())
        .map_err(|_| invalid(format!("{path:?} is not a dotted key inside the tenant (e.g. crm.url)")))?;
    Ok(keys.iter().map(|k| k.get().to_owned()).collect())
}

/// A TOML value; a bare word that is not one (`hubspot`, `https://…`, `Acme Remodeling`) is the string itself.
fn parse_value(raw: &str) -> Value {
    let raw = raw.trim();
    let mut value = raw.parse::<Value>().unwrap_or_else(|_| Value::from(raw));
    // The value's own spacing goes; the slot's (and its comment) is kept by `set_in`.
    value.decor_mut().clear();
    value
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_owned() } else { format!("{prefix}.{key}") }
}

/// Set `keys` in `table` to `value`, creating the sections on the way (a [tenant.x] section under a table, an
/// inline table under an inline table). A replaced value keeps its spacing and trailing comment.
fn set_in(table: &mut dyn TableLike, inline: bool, keys: &[String], done: &str, value: Value) -> Result<(), String> {
    let (head, rest) = keys.split_first().expect("a path has a key");
    let path = join(done, head);
    if rest.is_empty() {
        match table.get_mut(head) {
            Some(Item::Value(old)) => {
                let decor = old.decor().clone();
                *old = value;
                *old.decor_mut() = decor;
            }
            Some(slot) => *slot = Item::Value(value),
            None => {
                table.insert(head, Item::Value(value));
            }
        }
        return Ok(());
    }
    if !table.contains_key(head) {
        let section = if inline {
            Item::Value(Value::InlineTable(InlineTable::new()))
        } else {
            let mut t = Table::new();
            t.decor_mut().set_prefix("\n");
            Item::Table(t)
        };
        table.insert(head, section);
    }
    match table.get_mut(head) {
        Some(Item::Table(t)) => set_in(t, false, rest, &path, value),
        Some(Item::Value(Value::InlineTable(t))) => set_in(t, true, rest, &path, value),
        _ => Err(format!("{path} is not a table, so it has no {}", rest.join("."))),
    }
}

fn unset_in(table: &mut dyn TableLike, keys: &[String], done: &str) -> Result<(), String> {
    let (head, rest) = keys.split_first().expect("a path has a key");
    let path = join(done, head);
    if rest.is_empty() {
        return table.remove(head).map(|_| ()).ok_or_else(|| format!("has no {path} to unset"));
    }
    match table.get_mut(head) {
        Some(Item::Table(t)) => unset_in(t, rest, &path),
        Some(Item::Value(Value::InlineTable(t))) => unset_in(t, rest, &path),
        Some(_) => Err(format!("{path} is not a table, so it has no {}", rest.join("."))),
        None => Err(format!("has no {path}")),
    }
}

/// Point the tenant at a workflow JSON file. In a file on disk it is referenced (relative to the tenants file when
/// it lies beside it, as the functions resolve it); a Secret Manager tenants file is mounted alone, so there the
/// workflow is inlined as [tenant.workflow]. Either way the other form is removed.
fn set_workflow(target: &Target, tenant: &mut Table, file: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).map_err(|e| invalid(format!("--workflow-file {}: {e}", file.display())))?;
    let doc: Json = serde_json::from_str(&text)
        .map_err(|e| invalid(format!("--workflow-file {}: not JSON: {e}", file.display())))?;
    match &target.store {
        Store::File(_) => {
            let absolute = std::fs::canonicalize(file)?;
            let base = std::fs::canonicalize(if target.base_dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                &target.base_dir
            })?;
            let stored = absolute.strip_prefix(&base).map(Path::to_path_buf).unwrap_or(absolute);
            tenant.remove("workflow");
            tenant.insert("workflow_file", toml_edit::value(stored.display().to_string()));
        }
        Store::Secret(_) => {
            let object = doc
                .as_object()
                .ok_or_else(|| invalid(format!("--workflow-file {}: not a JSON object", file.display())))?;
            let table = json_table(object).map_err(|e| invalid(format!("--workflow-file {}: {e}", file.display())))?;
            tenant.remove("workflow_file");
            tenant.insert("workflow", Item::Table(table));
        }
    }
    Ok(())
}

/// Loading lets `workflow_file` replace an inline `workflow` without a word, so an edit of the inline one would
/// change nothing: a tenant with both is refused.
fn one_workflow(tenant: &Table, id: &str) -> anyhow::Result<()> {
    match tenant.get("workflow_file").and_then(Item::as_str) {
        Some(file) if tenant.contains_key("workflow") => Err(invalid(format!(
            "tenant {id}: its workflow comes from workflow_file = {file:?}, which replaces an inline workflow: edit \
             that file, give --workflow-file, or --unset workflow_file first"
        ))),
        _ => Ok(()),
    }
}

/// A JSON object as a TOML section: objects become sections, arrays of objects [[arrays of tables]], nulls
/// (absent in TOML) are left out.
fn json_table(map: &serde_json::Map<String, Json>) -> Result<Table, String> {
    let mut table = Table::new();
    table.decor_mut().set_prefix("\n");
    for (key, v) in map {
        match v {
            Json::Null => {}
            Json::Object(inner) => {
                table.insert(key, Item::Table(json_table(inner)?));
            }
            Json::Array(items) if !items.is_empty() && items.iter().all(Json::is_object) => {
                let mut array = ArrayOfTables::new();
                for item in items.iter().filter_map(Json::as_object) {
                    array.push(json_table(item)?);
                }
                table.insert(key, Item::ArrayOfTables(array));
            }
            other => {
                table.insert(key, Item::Value(json_value(other)?));
            }
        }
    }
    Ok(table)
}

fn json_value(v: &Json) -> Result<Value, String> {
    Ok(match v {
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) => Value::from(f),
            _ => return Err(format!("{n} does not fit a TOML number")),
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => {
            Value::Array(items.iter().filter(|i| !i.is_null()).map(json_value).collect::<Result<_, _>>()?)
        }
        Json::Object(map) => {
            let mut table = InlineTable::new();
            for (k, v) in map.iter().filter(|(_, v)| !v.is_null()) {
                table.insert(k, json_value(v)?);
            }
            Value::InlineTable(table)
        }
        Json::Null => return Err("null has no TOML form".into()),
    })
}

/// The tenant table a --from file holds: the file itself in the shape of one [[tenant]], or one [[tenant]] in it.
fn from_table(path: &Path, id: &str) -> anyhow::Result<Table> {
    let text = std::fs::read_to_string(path).map_err(|e| invalid(format!("--from {}: {e}", path.display())))?;
    let doc = text.parse::<DocumentMut>().map_err(|e| invalid(format!("--from {}: {e}", path.display())))?;
    let table = match doc.get("tenant").and_then(Item::as_array_of_tables) {
        Some(tenants) if tenants.len() == 1 => tenants.get(0).expect("one tenant").clone(),
        Some(tenants) => {
            return Err(invalid(format!(
                "--from {}: holds {} [[tenant]] tables; give one tenant",
                path.display(),
                tenants.len()
            )));
        }
        None => doc.as_table().clone(),
    };
    if let Some(other) = table.get("id").and_then(Item::as_str)
        && other != id
    {
        return Err(invalid(format!("--from {} is tenant {other:?}, not {id:?}", path.display())));
    }
    Ok(table)
}

/// The highest position of any table in the document: new tables are placed after it.
fn max_position(table: &Table) -> isize {
    let mut max = table.position().unwrap_or(0);
    for (_, item) in table.iter() {
        match item {
            Item::Table(t) => max = max.max(max_position(t)),
            Item::ArrayOfTables(a) => {
                for t in a.iter() {
                    max = max.max(max_position(t));
                }
            }
            _ => {}
        }
    }
    max
}

/// Give a table and every table under it one position: toml_edit writes tables by position, and equal positions
/// in the order they are nested, so a tenant copied from --from (whose positions are its own file's) stays whole.
fn set_positions(table: &mut Table, position: isize) {
    table.set_position(position);
    for (_, item) in table.iter_mut() {
        match item {
            Item::Table(t) => set_positions(t, position),
            Item::ArrayOfTables(a) => {
                for t in a.iter_mut() {
                    set_positions(t, position);
                }
            }
            _ => {}
        }
    }
}

/// The tenant's own part of the document as TOML text (its [[tenant]] and sections), or None when it has none.
fn tenant_text(text: &str, id: &str) -> Option<String> {
    let doc = text.parse::<DocumentMut>().ok()?;
    let tenant =
        doc.get("tenant")?.as_array_of_tables()?.iter().find(|t| t.get("id").and_then(Item::as_str) == Some(id))?;
    let mut alone = DocumentMut::new();
    let mut array = ArrayOfTables::new();
    array.push(tenant.clone());
    alone.insert("tenant", Item::ArrayOfTables(array));
    Some(alone.to_string().trim().to_owned() + "\n")
}

/// A tenant's TOML text as JSON (as written: no defaults).
fn table_json(text: &str) -> Option<Json> {
    let doc: Json = toml::from_str(text).ok()?;
    doc.get("tenant")?.get(0).cloned()
}

/// The lines that changed, `- old` / `+ new`, each under the section header it belongs to (`  [tenant.crm]`).
fn diff_lines(before: &str, after: &str) -> Vec<String> {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    // Longest common subsequence, from the end: lcs[i][j] is for a[i..] and b[j..]. Tenant tables are short.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut out = Vec::new();
    let mut header: Option<&str> = None;
    let mut header_shown = false;
    // A changed line is shown under its section's header, once per run of changes in that section.
    fn note(out: &mut Vec<String>, sign: char, line: &str, header: Option<&str>, shown: &mut bool) {
        if !*shown
            && !line.trim_start().starts_with('[')
            && let Some(h) = header
        {
            out.push(format!("  {h}"));
        }
        *shown = true;
        out.push(format!("{sign} {line}").trim_end().to_owned());
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            if a[i].trim_start().starts_with('[') {
                header = Some(a[i]);
                header_shown = false;
            }
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals first, so a changed line reads `- old` then `+ new`.
            note(&mut out, '-', a[i], header, &mut header_shown);
            i += 1;
        } else {
            if b[j].trim_start().starts_with('[') {
                header = Some(b[j]);
                header_shown = false;
            }
            note(&mut out, '+', b[j], header, &mut header_shown);
            j += 1;
        }
    }
    out
}

/// Which tenant and which field a load error is about.
struct Location {
    tenant: Option<String>,
    field: Option<String>,
}

/// A load error an operator can act on: the TOML parser's message with the tenant, the field and the line it
/// points at (`tenant acme, field crm.provider: unknown variant ...`). Errors from `Tenant::validate` already
/// name both.
fn explain(e: &anyhow::Error, text: &str, name: &str) -> String {
    let Some(de) = e.downcast_ref::<toml::de::Error>() else {
        return format!("{e:#}");
    };
    let message = de.message().trim();
    let Some(span) = de.span() else {
        return message.to_owned();
    };
    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let line = format!("line {line} of {name}");
    match locate(text, span.start) {
        Some(Location { tenant: Some(t), field: Some(f) }) => format!("tenant {t}, field {f}: {message} ({line})"),
        Some(Location { tenant: Some(t), field: None }) => format!("tenant {t}: {message} ({line})"),
        Some(Location { tenant: None, field: Some(f) }) => format!("field {f}: {message} ({line})"),
        _ => format!("{message} ({line})"),
    }
}

/// The tenant and field at byte offset `at` of the document. A [tenant.x] section belongs to the [[tenant]] above
/// it, so the tenant is the last one whose header starts before `at`.
fn locate(text: &str, at: usize) -> Option<Location> {
    let doc = toml_edit::Document::parse(text).ok()?;
    let root = doc.as_table();
    for (key, item) in root.iter().filter(|(k, _)| *k != "tenant") {
        let key_span = root.get_key_value(key).and_then(|(k, _)| k.span());
        if let Some(field) = field_at(item, key_span, at, key) {
            return Some(Location { tenant: None, field: Some(field) });
        }
    }
    let tenants = root.get("tenant")?.as_array_of_tables()?;
    let (index, tenant) = tenants.iter().enumerate().filter(|(_, t)| t.span().is_some_and(|s| s.start <= at)).last()?;
    let id = tenant.get("id").and_then(Item::as_str).map(str::to_owned).unwrap_or_else(|| format!("#{}", index + 1));
    Some(Location { tenant: Some(id), field: fields_at(tenant, at, "") })
}

fn contains(span: Option<std::ops::Range<usize>>, at: usize) -> bool {
    span.is_some_and(|s| s.start <= at && at < s.end.max(s.start + 1))
}

/// The innermost field of `table` whose key or value covers `at`.
fn fields_at(table: &dyn TableLike, at: usize, prefix: &str) -> Option<String> {
    table.iter().find_map(|(key, item)| {
        let key_span = table.get_key_value(key).and_then(|(k, _)| k.span());
        field_at(item, key_span, at, &join(prefix, key))
    })
}

fn field_at(item: &Item, key_span: Option<std::ops::Range<usize>>, at: usize, path: &str) -> Option<String> {
    let inner = match item {
        Item::Table(t) => fields_at(t, at, path),
        Item::ArrayOfTables(array) => array.iter().enumerate().find_map(|(i, t)| {
            let p = format!("{path}[{i}]");
            fields_at(t, at, &p).or_else(|| contains(t.span(), at).then_some(p))
        }),
        Item::Value(v) => value_at(v, at, path),
        Item::None => None,
    };
    inner.or_else(|| (contains(item.span(), at) || contains(key_span, at)).then(|| path.to_owned()))
}

fn value_at(v: &Value, at: usize, path: &str) -> Option<String> {
    match v {
        Value::InlineTable(t) => fields_at(t, at, path),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
            let p = format!("{path}[{i}]");
            value_at(v, at, &p).or_else(|| contains(v.span(), at).then_some(p))
        }),
        _ => None,
    }
}
