//! What an event-driven stage accepts from a storage event: the object's facts checked against the naming
//! contract (`{tenant}/{call}.{ext}`, with the same ids in the object's metadata), the stage's bucket, its
//! content type and its size. Pure: the function does the lookups (tenant, call) that need I/O.

use std::collections::BTreeMap;

use super::call::{CallRecord, CallSource, CallState};
use super::ids::{CallId, TenantId};

/// The facts a finalize event reports about an object.
#[derive(Debug, Clone, Copy)]
pub struct ObjectFacts<'a> {
    pub bucket: &'a str,
    pub name: &'a str,
    pub generation: Option<i64>,
    pub content_type: Option<&'a str>,
    pub size: Option<i64>,
    pub metadata: &'a BTreeMap<String, String>,
}

/// What a stage expects of its objects.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub bucket: &'a str,
    /// File extensions the stage can read, lower case.
    pub extensions: &'a [&'a str],
    /// The media type's top level (`audio`) or a full type (`application/json`).
    pub media: &'a str,
    pub max_bytes: u64,
}

/// An object the stage will work on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageObject {
    pub tenant_id: TenantId,
    pub call_id: CallId,
    pub generation: i64,
    pub extension: String,
    /// Lower case, without parameters.
    pub content_type: String,
    pub size: u64,
}

/// Why an object is poison, with the ids it claims (possibly invalid: they are kept for the dead letter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub tenant_id: String,
    pub call_id: String,
}

/// Recordings the engines can read (Speech-to-Text's containers; the offline engine reads the first four).
pub const AUDIO_EXTENSIONS: &[&str] = &["mp3", "wav", "flac", "ogg", "opus", "webm", "m4a", "amr"];

pub fn check(facts: &ObjectFacts<'_>, expected: &Expected<'_>) -> Result<StageObject, Refusal> {
    let (stem, extension) = facts.name.rsplit_once('.').unwrap_or((facts.name, ""));
    let (claimed_tenant, claimed_call) = stem.split_once('/').unwrap_or(("", stem));
    let refuse = |reason: String| Refusal {
        reason,
        tenant_id: claimed_tenant.chars().take(63).collect(),
        call_id: claimed_call.chars().take(64).collect(),
    };
    if facts.bucket != expected.bucket {
        return Err(refuse(format!("object is in bucket {:?}, not {:?}", facts.bucket, expected.bucket)));
    }
    let generation = facts.generation.filter(|g| *g > 0).ok_or_else(|| refuse("event has no generation".into()))?;
    let tenant_id = TenantId::parse(claimed_tenant)
        .map_err(|_| refuse(format!("object name {:?} is not {{tenant}}/{{call}}.{{ext}}", facts.name)))?;
    let call_id = CallId::parse(claimed_call)
        .map_err(|_| refuse(format!("object name {:?} is not {{tenant}}/{{call}}.{{ext}}", facts.name)))?;
    let extension = extension.to_ascii_lowercase();
    if !expected.extensions.contains(&extension.as_str()) {
        return Err(refuse(format!("extension {extension:?} is not one of {}", expected.extensions.join(", "))));
    }
    for (key, want) in [("tenant_id", tenant_id.as_str()), ("call_id", call_id.as_str())] {
        match facts.metadata.get(key) {
            Some(got) if got == want => {}
            Some(got) => return Err(refuse(format!("metadata {key} {got:?} does not match the object name"))),
            None => return Err(refuse(format!("object metadata has no {key}"))),
        }
    }
    let content_type = facts.content_type.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let media_ok = match expected.media.split_once('/') {
        Some(_) => content_type == expected.media,
        None => content_type.split_once('/').is_some_and(|(top, sub)| top == expected.media && !sub.is_empty()),
    };
    if !media_ok {
        return Err(refuse(format!("content type {content_type:?} is not {}", expected.media)));
    }
    let size = facts.size.unwrap_or(0);
    if size <= 0 {
        return Err(refuse("object is empty".into()));
    }
    if size as u64 > expected.max_bytes {
        return Err(refuse(format!("object is {size} bytes, over the {} byte limit", expected.max_bytes)));
    }
    Ok(StageObject { tenant_id, call_id, generation, extension, content_type, size: size as u64 })
}

/// Whether a call is where a stage that moves it to `to` can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// The call is already at or past `to`, or ended: a late or repeated event, acknowledged with no effect.
    Past(CallState),
    /// The object cannot belong to this call (a web form has no recording): poison.
    Foreign(&'static str),
}

/// A recording may arrive while the call is still `received` (the object is stored before the fetch's
/// transition commits), so any state before `to` is ready.
pub fn readiness(call: &CallRecord, to: CallState) -> Readiness {
    if call.source == CallSource::Form && to == CallState::Transcribed {
        return Readiness::Foreign("the call is a web form, which has no recording");
    }
    if call.state.can_move_to(to) { Readiness::Ready } else { Readiness::Past(call.state) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(tenant: &str, call: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("tenant_id".into(), tenant.into()), ("call_id".into(), call.into())])
    }

    const EXPECTED: Expected<'static> =
        Expected { bucket: "recordings", extensions: AUDIO_EXTENSIONS, media: "audio", max_bytes: 1000 };

    fn checked(f: impl FnOnce(&mut ObjectFacts<'_>)) -> Result<StageObject, Refusal> {
        let m = meta("acme", "CAL1");
        let mut facts = ObjectFacts {
            bucket: "recordings",
            name: "acme/CAL1.mp3",
            generation: Some(7),
            content_type: Some("audio/mpeg"),
            size: Some(10),
            metadata: &m,
        };
        f(&mut facts);
        check(&facts, &EXPECTED)
    }

    #[test]
    fn a_well_formed_recording_is_accepted() {
        let o = checked(|_| {}).unwrap();
        assert_eq!((o.tenant_id.as_str(), o.call_id.as_str(), o.generation), ("acme", "CAL1", 7));
        assert_eq!((o.extension.as_str(), o.content_type.as_str(), o.size), ("mp3", "audio/mpeg", 10));
        assert!(checked(|f| f.content_type = Some("Audio/WAV; rate=8000")).is_ok());
    }

    #[test]
    fn every_poison_object_is_refused_with_its_reason_and_claimed_ids() {
        // 'static, as the cases' closures may put them in facts of any lifetime.
        let other: &'static BTreeMap<String, String> = Box::leak(Box::new(meta("globex", "CAL1")));
        let no_meta: &'static BTreeMap<String, String> = Box::leak(Box::default());
        type Change = Box<dyn Fn(&mut ObjectFacts<'_>)>;
        let cases: Vec<(&str, Change)> = vec![
            ("bucket", Box::new(|f| f.bucket = "transcripts")),
            ("no generation", Box::new(|f| f.generation = None)),
            ("is not {tenant}/{call}", Box::new(|f| f.name = "CAL1.mp3")),
            ("is not {tenant}/{call}", Box::new(|f| f.name = "acme/sub/CAL1.mp3")),
            ("is not {tenant}/{call}", Box::new(|f| f.name = "ACME/CAL1.mp3")),
            ("extension", Box::new(|f| f.name = "acme/CAL1.exe")),
            ("extension", Box::new(|f| f.name = "acme/CAL1")),
            ("does not match", Box::new(|f| f.metadata = other)),
            ("has no tenant_id", Box::new(|f| f.metadata = no_meta)),
            ("content type", Box::new(|f| f.content_type = Some("text/html"))),
            ("content type", Box::new(|f| f.content_type = None)),
            ("content type", Box::new(|f| f.content_type = Some("audio/"))),
            ("empty", Box::new(|f| f.size = Some(0))),
            ("empty", Box::new(|f| f.size = None)),
            ("over the 1000 byte limit", Box::new(|f| f.size = Some(1001))),
        ];
        for (want, change) in cases {
            let refused = checked(|f| change(f)).unwrap_err();
            assert!(refused.reason.contains(want), "{want}: {}", refused.reason);
        }
        let refused = checked(|f| f.metadata = other).unwrap_err();
        assert_eq!((refused.tenant_id.as_str(), refused.call_id.as_str()), ("acme", "CAL1"));
    }

    #[test]
    fn a_full_media_type_must_match_exactly() {
        let expected = Expected { media: "application/json", extensions: &["json"], ..EXPECTED };
        let m = meta("acme", "CAL1");
        let facts = ObjectFacts {
            bucket: "recordings",
            name: "acme/CAL1.json",
            generation: Some(1),
            content_type: Some("application/json; charset=utf-8"),
            size: Some(2),
            metadata: &m,
        };
        assert!(check(&facts, &expected).is_ok());
        assert!(check(&ObjectFacts { content_type: Some("application/jsonx"), ..facts }, &expected).is_err());
    }
}
