//! Load generator for callflow's benchmark scripts. Sends signed CallRail webhooks (each with a fresh call id,
//! so every one is a real accepted write, not a duplicate) to a running on-webhook over loopback.
//!
//!   loadgen max  URL KEY BODY_FILE CONNECTIONS SECONDS        closed loop: how many per second at most
//!   loadgen rate URL KEY BODY_FILE CONNECTIONS SECONDS RATE   open loop at a fixed rate: latency percentiles
//!   loadgen cold URL KEY BODY_FILE EXE [ARG…]                 exec EXE [ARG…], ms until its first 200, then stop it
//!
//! Latency in rate mode is measured from when a request was *scheduled*, not when it was sent, so a stalled
//! server shows up in the percentiles instead of silently lowering the offered load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

struct Target {
    host: String,
    path: String,
    key: Vec<u8>,
    template: serde_json::Value,
}

impl Target {
    fn request(&self, n: u64) -> Request<Full<Bytes>> {
        let mut body = self.template.clone();
        body["resource_id"] = format!("CALbench{:08x}{n:016x}", std::process::id()).into();
        let body = serde_json::to_vec(&body).expect("json");
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&self.key).expect("hmac key");
        mac.update(&body);
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        Request::post(&self.path)
            .header("host", &self.host)
            .header("content-type", "application/json")
            .header("signature", sig)
            .body(Full::new(Bytes::from(body)))
            .expect("request")
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(host: &str) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(host).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(sender: &mut Option<Sender>, target: &Target, n: u64) -> bool {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = connect(&target.host).await.ok();
    }
    let Some(s) = sender.as_mut() else { return false };
    if s.ready().await.is_err() {
        *sender = None;
        return false;
    }
    match s.send_request(target.request(n)).await {
        Ok(resp) => {
            let ok = resp.status().is_success();
            let _ = resp.into_body().collect().await;
            ok
        }
        Err(_) => {
            *sender = None;
            false
        }
    }
}

struct Stats {
    latencies_us: Vec<u64>,
    ok: u64,
    failed: u64,
}

async fn run(target: Arc<Target>, connections: usize, seconds: f64, rate: Option<f64>) -> (Stats, Duration) {
    let total = rate.map_or(u64::MAX, |r| (r * seconds) as u64);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(50);
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (target, next) = (target.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut stats = Stats { latencies_us: Vec::new(), ok: 0, failed: 0 };
            let mut sender = connect(&target.host).await.ok();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let scheduled = match rate {
                    Some(r) => start + Duration::from_secs_f64(n as f64 / r),
                    None => Instant::now().max(start),
                };
                if rate.is_none() && scheduled >= deadline {
                    break;
                }
                tokio::time::sleep_until(scheduled.into()).await;
                let ok = send(&mut sender, &target, n).await;
                stats.latencies_us.push(scheduled.elapsed().as_micros() as u64);
                if ok { stats.ok += 1 } else { stats.failed += 1 }
            }
            stats
        }));
    }
    let mut all = Stats { latencies_us: Vec::new(), ok: 0, failed: 0 };
    for w in workers {
        let s = w.await.expect("worker");
        all.latencies_us.extend(s.latencies_us);
        all.ok += s.ok;
        all.failed += s.failed;
    }
    let elapsed = start.elapsed();
    all.latencies_us.sort_unstable();
    (all, elapsed)
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn target(url: &str, key: &str, body_file: &str) -> anyhow::Result<Target> {
    let rest = url.strip_prefix("http://").context("URL must start with http://")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let template = serde_json::from_slice(&std::fs::read(body_file)?)?;
    Ok(Target { host: host.to_owned(), path, key: key.as_bytes().to_vec(), template })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).context("missing argument (see the header of main.rs)");
    let mode = arg(1)?;
    let target = Arc::new(target(arg(2)?, arg(3)?, arg(4)?)?);
    match mode {
        "cold" => {
            // Cold start: from exec to the first accepted webhook (not just a listening socket).
            let started = Instant::now();
            let mut child = std::process::Command::new(arg(5)?)
                .args(&args[6..])
                .stdout(std::process::Stdio::null())
                .spawn()
                .context("exec the function")?;
            let mut sender = None;
            let mut n = 0;
            let result = loop {
                if started.elapsed() > Duration::from_secs(10) {
                    break Err(anyhow::anyhow!("no 200 within 10 s"));
                }
                n += 1;
                if send(&mut sender, &target, n).await {
                    break Ok(started.elapsed());
                }
                tokio::time::sleep(Duration::from_micros(100)).await;
            };
            let _ = child.kill();
            let _ = child.wait();
            println!("cold_start_ms={:.2}", result?.as_secs_f64() * 1e3);
            Ok(())
        }
        "max" | "rate" => {
            let connections: usize = arg(5)?.parse()?;
            let seconds: f64 = arg(6)?.parse()?;
            let rate = if mode == "rate" { Some(arg(7)?.parse::<f64>()?) } else { None };
            let (s, elapsed) = run(target, connections, seconds, rate).await;
            let l = &s.latencies_us;
            println!(
                "mode={mode} connections={connections} ok={} failed={} seconds={:.2} throughput_rps={:.0} \
                 p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3}",
                s.ok,
                s.failed,
                elapsed.as_secs_f64(),
                s.ok as f64 / elapsed.as_secs_f64(),
                pct(l, 50.0),
                pct(l, 90.0),
                pct(l, 99.0),
                pct(l, 99.9),
                pct(l, 100.0),
            );
            Ok(())
        }
        other => bail!("unknown mode {other}"),
    }
}
