//! `callflow calls show`: one call's whole path for an operator — its state and why, when it arrived and last
//! moved, its recording and transcript objects, the analysis, the CRM delivery and any dead letters — from the
//! backends the environment names (embedded by default; Spanner and Cloud Storage with `CALLFLOW_ENVIRONMENT`),
//! through cleanup-scheduled's ports. Callers' phone numbers and emails are masked unless `--reveal`.

use callflow::domain::pii::{mask_email, mask_phone};
use callflow::domain::{CallId, CallRecord, TenantId};
use callflow::ports::ObjectInfo;
use clap::Subcommand;
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum CallsAction {
    /// A call's whole path by its id (CallRail's CAL…, or a form's FRM…).
    Show {
        #[arg(long)]
        tenant: String,
        call: String,
        /// Show the caller's phone and email unmasked.
        #[arg(long)]
        reveal: bool,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(action: CallsAction) -> anyhow::Result<()> {
    let CallsAction::Show { tenant, call, reveal, json } = action;
    let settings = cleanup_scheduled::Settings::from_env()?;
    let service = cleanup_scheduled::Service::connect(&settings).await?;
    let p = &service.ports;
    let tenant_id = TenantId::parse(&tenant).map_err(|e| anyhow::anyhow!("tenant {tenant:?}: {e}"))?;
    anyhow::ensure!(p.tenants.tenant(&tenant_id).await?.is_some(), "no tenant {tenant:?} in the tenants file");
    let call_id = CallId::parse(&call).map_err(|e| anyhow::anyhow!("call {call:?}: {e}"))?;
    let record =
        p.state.call(&tenant_id, &call_id).await?.ok_or_else(|| anyhow::anyhow!("{tenant} has no call {call}"))?;
    let analysis = p.state.analysis(&tenant_id, &call_id).await?;
    let delivery = p.state.delivery(&tenant_id, &call_id).await?;
    let dead_letters = p.state.call_dead_letters(&tenant_id, &call_id).await?;
    // The record keeps `bucket/name`.
    let recording = match record.recording_object.as_deref().and_then(|o| o.split_once('/')) {
        Some((bucket, name)) => p.objects.head(bucket, name).await?,
        None => None,
    };
    let transcript_name = format!("{}/{}.json", tenant_id, call_id);
    let transcript = p.objects.head(&settings.transcripts_bucket, &transcript_name).await?;

    let doc = json!({
        "call": call_json(&record, reveal),
        "objects": {
            "recording": recording.as_ref().map(object_json),
            "transcript": transcript.as_ref().map(object_json),
        },
        "analysis": analysis.map(|a| analysis_json(&a, reveal)),
        "delivery": delivery,
        "dead_letters": dead_letters.iter().map(|d| json!({
            "id": d.id, "kind": d.kind, "attempts": d.attempts, "reason": d.reason,
            "created_at": d.created_at, "replayed_at": d.replayed_at,
        })).collect::<Vec<_>>(),
    });
    if json {
        println!("{doc}");
    } else {
        print!("{}", render(&doc));
    }
    Ok(())
}

/// The call record with the caller's contact details masked unless `reveal`.
pub fn call_json(record: &CallRecord, reveal: bool) -> Value {
    let mut v = serde_json::to_value(record).expect("a call record serializes");
    if !reveal {
        let lead = &mut v["lead"];
        for (field, mask) in [("customer_phone", mask_phone as fn(&str) -> String), ("customer_email", mask_email)] {
            if let Some(s) = lead.get(field).and_then(Value::as_str) {
                lead[field] = json!(mask(s));
            }
        }
        if let Some(Value::String(_)) = lead.get("customer_name") {
            lead["customer_name"] = json!("(masked)");
        }
    }
    v
}

/// The analysis with the caller's details it found masked unless `reveal`.
fn analysis_json(a: &callflow::domain::analysis::Analysis, reveal: bool) -> Value {
    let mut v = serde_json::to_value(a).expect("an analysis serializes");
    if !reveal {
        let caller = &mut v["caller"];
        if let Some(e) = caller.get("email").and_then(Value::as_str) {
            caller["email"] = json!(mask_email(e));
        }
        if let Some(Value::String(_)) = caller.get("name") {
            caller["name"] = json!("(masked)");
        }
    }
    v
}

fn object_json(o: &ObjectInfo) -> Value {
    json!({"bucket": o.bucket, "name": o.name, "generation": o.generation, "size": o.size,
           "content_type": o.content_type, "created": o.created})
}

/// The text an operator reads: one line per fact, in the order the call went.
pub fn render(doc: &Value) -> String {
    let c = &doc["call"];
    let s = |v: &Value| {
        v.as_str().map(str::to_owned).unwrap_or_else(|| if v.is_null() { "-".into() } else { v.to_string() })
    };
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<12} {v}\n"));
    line("call", format!("{} / {} ({})", s(&c["tenant_id"]), s(&c["call_id"]), s(&c["source"])));
    let reason = c["state_reason"].as_str().map(|r| format!(" — {r}")).unwrap_or_default();
    line("state", format!("{}{reason}", s(&c["state"])));
    line("received", s(&c["created_at"]));
    line("last moved", s(&c["updated_at"]));
    let lead = &c["lead"];
    line(
        "caller",
        format!("{} {} {}", s(&lead["customer_name"]), s(&lead["customer_phone"]), s(&lead["customer_email"])),
    );
    line("source", s(&lead["source_name"]));
    for (label, key) in [("recording", "recording"), ("transcript", "transcript")] {
        let o = &doc["objects"][key];
        let text = if o.is_null() {
            "-".to_owned()
        } else {
            format!(
                "{}/{} ({} bytes, generation {}, {})",
                s(&o["bucket"]),
                s(&o["name"]),
                o["size"],
                o["generation"],
                s(&o["created"])
            )
        };
        line(label, text);
    }
    let a = &doc["analysis"];
    if a.is_null() {
        line("analysis", "-".into());
    } else {
        line(
            "analysis",
            format!(
                "intent {}, project {}, score {}, spam {} ({})",
                s(&a["intent"]),
                s(&a["project_type"]),
                s(&a["lead_score"]),
                s(&a["spam_likelihood"]),
                s(&a["analyzer"])
            ),
        );
    }
    let d = &doc["delivery"];
    if d.is_null() {
        line("CRM", "-".into());
    } else {
        line(
            "CRM",
            format!(
                "{} record {} ({}, {} attempt(s), {})",
                s(&d["provider"]),
                s(&d["record_id"]),
                if d["created"] == json!(true) { "created" } else { "already there" },
                d["attempts"],
                s(&d["delivered_at"])
            ),
        );
    }
    let dls = doc["dead_letters"].as_array().cloned().unwrap_or_default();
    if dls.is_empty() {
        line("dead letters", "-".into());
    }
    for dl in dls {
        let replayed = dl["replayed_at"].as_str().map(|t| format!(", replayed {t}")).unwrap_or_default();
        line(
            "dead letter",
            format!(
                "{} {} after {} attempt(s): {}{replayed}",
                s(&dl["id"]),
                s(&dl["kind"]),
                dl["attempts"],
                s(&dl["reason"])
            ),
        );
    }
    out
}
