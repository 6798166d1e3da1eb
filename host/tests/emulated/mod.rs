//! What the emulator-topology tests share (topology.rs, topology_faults.rs): whether the emulators are there,
//! free ports, the workspace's other binaries, and child processes that die with the test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Child;

pub fn emulators_present() -> bool {
    let vars = ["SPANNER_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "BIGQUERY_EMULATOR_HOST"];
    let missing: Vec<&str> =
        vars.into_iter().filter(|v| std::env::var(v).ok().filter(|h| !h.is_empty()).is_none()).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CALLFLOW_EMULATORS").as_deref() != Ok("required"),
        "CALLFLOW_EMULATORS=required but {} not set: run scripts/emulators start",
        missing.join(", ")
    );
    eprintln!("skipped: no emulators (eval \"$(scripts/emulators env)\" after scripts/emulators start)");
    false
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed when the test ends, however it ends.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary of another workspace package, built beside this one by `cargo test --workspace`.
pub fn sibling_binary(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_callflow")).with_file_name(name);
    assert!(path.exists(), "{} is not built: run cargo build --workspace (or cargo test --workspace)", path.display());
    path
}
