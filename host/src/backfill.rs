//! `callflow backfill`: a tenant's CallRail calls of a date range, listed through CallRail's API page by page and
//! ingested through the same intake as reconciliation (the post-call webhook's dedupe key, so calls already known
//! are duplicates and change nothing, and new ones are fetched, transcribed and analysed like any call).
//!
//! Resumable: the range's cursor (page reached, this hour's requests, a 429's wait) is kept in the state store
//! under `backfill:{from}-{to}`, so running the same command again goes on where it stopped — after Ctrl-C, a
//! failure, or the hour's request budget running out. Listing requests have their own hourly budget, below
//! reconciliation's, so both together stay under CallRail's 1,000 requests an hour per account.

use callflow::domain::TenantId;
use callflow::domain::cleanup::{Job, JobReport, ReconcileCursor, ReconcilePass};
use callflow::ports::{CallListQuery, VendorError};
use chrono::{DateTime, NaiveDate, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

#[derive(clap::Args)]
pub struct BackfillArgs {
    #[arg(long)]
    pub tenant: String,
    /// First day (YYYY-MM-DD, UTC) or instant (RFC 3339).
    #[arg(long, value_parser = parse_start)]
    pub from: DateTime<Utc>,
    /// Last day, included (YYYY-MM-DD, UTC), or an instant (RFC 3339, excluded).
    #[arg(long, value_parser = parse_end)]
    pub to: DateTime<Utc>,
    /// Listing requests per hour this backfill may make (CallRail allows 1,000 per account; reconciliation
    /// takes up to 500, and each new call's recording fetch counts too).
    #[arg(long, default_value_t = 100)]
    pub requests_per_hour: u32,
    /// Calls per page (CallRail allows up to 250).
    #[arg(long, default_value_t = 250)]
    pub per_page: u32,
    /// Count what is missing and ingest nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

fn parse_start(s: &str) -> Result<DateTime<Utc>, String> {
    parse_instant(s, false)
}

fn parse_end(s: &str) -> Result<DateTime<Utc>, String> {
    parse_instant(s, true)
}

/// A day is its UTC midnight (the next day's, for an end: the day is included); an instant is itself.
pub fn parse_instant(s: &str, end: bool) -> Result<DateTime<Utc>, String> {
    if let Ok(day) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let day = if end { day.succ_opt().ok_or("date out of range")? } else { day };
        return Ok(day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("{s:?} is neither YYYY-MM-DD nor RFC 3339"))
}

/// The cursor's key: one per range, so two ranges never share a cursor.
pub fn cursor_key(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    format!("backfill:{}-{}", from.format("%Y%m%dT%H%M%SZ"), to.format("%Y%m%dT%H%M%SZ"))
}

pub async fn run(args: BackfillArgs) -> anyhow::Result<()> {
    let now = Utc::now();
    let to = args.to.min(now);
    anyhow::ensure!(args.from < to, "--from must be before --to (and before now)");
    anyhow::ensure!((1..=250).contains(&args.per_page), "--per-page must be 1 to 250");
    let settings = cleanup_scheduled::Settings::from_env()?;
    let service = cleanup_scheduled::Service::connect(&settings).await?;
    let p = &service.ports;
    let id = TenantId::parse(&args.tenant).map_err(|e| anyhow::anyhow!("tenant {:?}: {e}", args.tenant))?;
    let tenant = p
        .tenants
        .tenant(&id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no tenant {:?} in the tenants file", args.tenant))?;
    let cr = tenant.callrail.as_ref().ok_or_else(|| anyhow::anyhow!("{} has no CallRail account", tenant.id))?;
    let key_ref = cr.api_key.as_ref().ok_or_else(|| anyhow::anyhow!("{} has no CallRail API key", tenant.id))?;
    let api_key = p.secrets.secret(key_ref).await.map_err(|e| anyhow::anyhow!("CallRail API key: {e}"))?;

    let key = cursor_key(args.from, to);
    let stored = p.state.job_cursor(&tenant.id, &key).await?;
    let mut cursor = ReconcileCursor::parse(stored.as_deref());
    if stored.is_some() && cursor.pass.is_none() {
        println!("{} {} → {} was backfilled already", tenant.id, args.from, to);
        return Ok(());
    }
    let mut pass = cursor.pass.clone().unwrap_or(ReconcilePass { start: args.from, end: to, next_page: 1 });
    let mut report = JobReport::new(Job::Reconciliation, tenant.id.as_str(), args.dry_run);
    // Pages on stderr, drawn only at a terminal.
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template("{bar:40} page {pos}/{len} · {msg}").expect("a valid template"));
    let stopped: Option<String> = loop {
        if let Some(until) = cursor.paused_until.filter(|u| *u > Utc::now()) {
            break Some(format!("CallRail asked to wait until {until}; run the same command again then"));
        }
        if !cursor.budget.take(Utc::now(), args.requests_per_hour) {
            break Some(format!(
                "this hour's {} listing requests are spent; run the same command again next hour",
                args.requests_per_hour
            ));
        }
        let query = CallListQuery { start: pass.start, end: pass.end, page: pass.next_page, per_page: args.per_page };
        report.count("requests", 1);
        let page = match p.callrail.list_calls(&cr.account_id, &api_key, &query).await {
            Ok(page) => page,
            Err(VendorError::RateLimited { retry_after }) => {
                let wait = retry_after.unwrap_or(std::time::Duration::from_secs(60));
                cursor.paused_until = Some(Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default());
                report.count("rate_limited", 1);
                continue;
            }
            Err(e) => {
                break Some(format!("listing page {}: {e}; run the same command again to resume", pass.next_page));
            }
        };
        bar.set_length(u64::from(page.total_pages.max(1)));
        let mut failed = None;
        for listed in &page.calls {
            report.count("listed", 1);
            if let Err(e) =
                cleanup_scheduled::reconcile::ingest(&service, &tenant, listed, args.dry_run, &mut report).await
            {
                failed = Some(format!("page {}: {e}; run the same command again to resume", pass.next_page));
                break;
            }
        }
        if failed.is_some() {
            break failed;
        }
        bar.set_position(u64::from(pass.next_page));
        let c = &report.counts;
        bar.set_message(format!(
            "{} listed, {} new, {} known",
            c.get("listed").unwrap_or(&0),
            c.get(if args.dry_run { "missing" } else { "ingested" }).unwrap_or(&0),
            c.get("known").unwrap_or(&0)
        ));
        if page.calls.is_empty() || page.page >= page.total_pages {
            cursor.pass = None;
            break None;
        }
        pass.next_page += 1;
        cursor.pass = Some(pass.clone());
        if !args.dry_run {
            p.state.set_job_cursor(&tenant.id, &key, Some(&cursor.encode())).await?;
        }
    };
    bar.finish_and_clear();
    if !args.dry_run {
        p.state.set_job_cursor(&tenant.id, &key, Some(&cursor.encode())).await?;
    }
    let complete = stopped.is_none();
    if args.json {
        println!(
            "{}",
            json!({"tenant": tenant.id.as_str(), "from": args.from, "to": to, "complete": complete,
                   "dry_run": args.dry_run, "counts": report.counts, "errors": report.errors, "stopped": stopped,
                   "calls": report.calls})
        );
    } else {
        let counts: Vec<String> = report.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("{} {} → {}: {}", tenant.id, args.from, to, counts.join(", "));
        for e in &report.errors {
            println!("  error: {e}");
        }
        match &stopped {
            Some(why) => println!("stopped: {why}"),
            None if args.dry_run => println!("dry run: nothing ingested"),
            None => println!("done; new calls go through the chain like any webhook's"),
        }
    }
    anyhow::ensure!(complete, "backfill stopped before the end of the range");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_midnights_and_the_last_day_is_included() {
        assert_eq!(parse_instant("2026-11-01", false).unwrap().to_rfc3339(), "2026-11-01T00:00:00+00:00");
        assert_eq!(parse_instant("2026-11-07", true).unwrap().to_rfc3339(), "2026-11-08T00:00:00+00:00");
        assert_eq!(parse_instant("2026-11-07T12:00:00-05:00", true).unwrap().to_rfc3339(), "2026-11-07T17:00:00+00:00");
        assert!(parse_instant("7/11/2026", false).is_err());
        let key = cursor_key(parse_instant("2026-11-01", false).unwrap(), parse_instant("2026-11-07", true).unwrap());
        assert_eq!(key, "backfill:20261101T000000Z-20261108T000000Z");
        assert!(key.len() <= 64, "fits the job_cursors key");
    }
}
