//! The cleanup run request (Cloud Scheduler's HTTP body, the embedded schedule's, or an operator's). Input: the body.
#![no_main]

use callflow::domain::cleanup::{Job, RunRequest};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|body: &[u8]| {
    let Ok(request) = RunRequest::parse(body) else { return };
    if body.trim_ascii().is_empty() {
        assert_eq!(request, RunRequest::default());
    }
    // Jobs run once each, in the fixed order.
    let order: Vec<Job> = Job::ALL.into_iter().filter(|j| request.jobs.contains(j)).collect();
    assert_eq!(request.jobs, order);
    // Written back, it reads the same.
    let again = json!({"jobs": request.jobs, "dry_run": request.dry_run});
    assert_eq!(RunRequest::parse(again.to_string().as_bytes()), Ok(request), "round trip through {again}");
});
