//! The analysis of a call: what the caller wants, how good a lead it is, whether it is spam. Produced by an
//! analyzer (Gemini or the rules), validated here whatever produced it, stored on the call. Pure: no I/O.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const ANALYSIS_SCHEMA_VERSION: u32 = 1;

macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
            /// The allowed values, for schemas and error messages.
            pub fn names() -> Vec<&'static str> {
                Self::ALL.iter().map(|v| v.as_str()).collect()
            }
        }
    };
}

label_enum!(
    /// Why the caller called.
    Intent {
        NewLead = "new_lead",
        ExistingCustomer = "existing_customer",
        VendorSolicitation = "vendor_solicitation",
        SpamRobocall = "spam_robocall",
        WrongNumber = "wrong_number",
        JobSeeker = "job_seeker",
        Other = "other",
    }
);

label_enum!(
    /// The caller's main project; `none` when the call is not about a project.
    ProjectType {
        Kitchen = "kitchen",
        Bathroom = "bathroom",
        Roofing = "roofing",
        Windows = "windows",
        Flooring = "flooring",
        Addition = "addition",
        Basement = "basement",
        Deck = "deck",
        Siding = "siding",
        Other = "other",
        None = "none",
    }
);

label_enum!(
    Urgency {
        Emergency = "emergency",
        Soon = "soon",
        Flexible = "flexible",
        Unknown = "unknown",
    }
);

label_enum!(
    /// What the caller said about money.
    Budget {
        High = "high",
        Medium = "medium",
        Low = "low",
        Unknown = "unknown",
    }
);

label_enum!(
    Sentiment {
        Positive = "positive",
        Neutral = "neutral",
        Negative = "negative",
    }
);

/// Contact details the caller gave, for the CRM's fields (never copied into free text or analytics).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_time: Option<String>,
}

/// What the analyzers decide: the part an LLM answers and the rules compute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Findings {
    pub intent: Intent,
    pub project_type: ProjectType,
    /// 0–100.
    pub lead_score: u8,
    pub score_reasons: Vec<String>,
    pub urgency: Urgency,
    pub budget: Budget,
    pub sentiment: Sentiment,
    /// 0–100.
    pub spam_likelihood: u8,
    /// Two sentences at most.
    pub summary: String,
    #[serde(default)]
    pub caller: CallerDetails,
}

/// Tokens and money an analysis cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    pub cost_usd: f64,
    /// Requests made to the model (a correction is a second one); absent in analyses stored before it was kept.
    #[serde(default)]
    pub requests: u32,
}

/// The stored analysis of a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub schema_version: u32,
    /// Who produced it: `rules/1`, `gemini/gemini-2.5-flash`.
    pub analyzer: String,
    /// Set when the rules stood in for the tenant's LLM: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    #[serde(flatten)]
    pub findings: Findings,
    pub usage: Usage,
    /// How many things were redacted before the text left for the analyzer.
    #[serde(default)]
    pub redactions: usize,
}

impl Findings {
    pub fn is_spam(&self, threshold: u8) -> bool {
        self.spam_likelihood >= threshold
    }
}

/// Score bands as analysts and the labelled set use them.
pub fn score_band(score: u8) -> &'static str {
    match score {
        70.. => "high",
        40..=69 => "medium",
        _ => "low",
    }
}

/// The JSON Schema an LLM must answer in (the subset Vertex AI's `responseJsonSchema` takes).
pub fn response_schema() -> Value {
    let string = serde_json::json!({"type": "string"});
    let enumerated = |values: Vec<&str>| serde_json::json!({"type": "string", "enum": values});
    let percent = serde_json::json!({"type": "integer", "minimum": 0, "maximum": 100});
    let fields = [
        "intent",
        "project_type",
        "lead_score",
        "score_reasons",
        "urgency",
        "budget",
        "sentiment",
        "spam_likelihood",
        "summary",
        "caller",
    ];
    serde_json::json!({
        "type": "object",
        "properties": {
            "intent": enumerated(Intent::names()),
            "project_type": enumerated(ProjectType::names()),
            "lead_score": percent,
            "score_reasons": {"type": "array", "items": string, "maxItems": 5},
            "urgency": enumerated(Urgency::names()),
            "budget": enumerated(Budget::names()),
            "sentiment": enumerated(Sentiment::names()),
            "spam_likelihood": percent,
            "summary": string,
            "caller": {
                "type": "object",
                "properties": {"name": string, "email": string, "zip": string, "callback_time": string},
            },
        },
        "required": &fields[..9],
        "propertyOrdering": fields,
    })
}

/// Check an LLM's answer field by field: every problem is named, so a retry can be told exactly what to fix.
pub fn validate_answer(text: &str) -> Result<Findings, Vec<String>> {
    let value: Value = serde_json::from_str(text.trim()).map_err(|e| vec![format!("not valid JSON: {e}")])?;
    let Some(obj) = value.as_object() else { return Err(vec!["the answer must be a JSON object".into()]) };
    let mut problems = Vec::new();
    fn label<T>(
        obj: &serde_json::Map<String, Value>,
        key: &str,
        parse: fn(&str) -> Option<T>,
        names: Vec<&str>,
        problems: &mut Vec<String>,
    ) -> Option<T> {
        match obj.get(key).and_then(Value::as_str) {
            Some(s) => parse(s).or_else(|| {
                problems.push(format!("{key} {s:?} is not one of {}", names.join(", ")));
                None
            }),
            None => {
                problems.push(format!("{key} is missing or not a string"));
                None
            }
        }
    }
    let percent = |key: &str, problems: &mut Vec<String>| -> Option<u8> {
        match obj.get(key).and_then(Value::as_f64) {
            Some(n) if (0.0..=100.0).contains(&n) && n.fract() == 0.0 => Some(n as u8),
            Some(n) => {
                problems.push(format!("{key} {n} is not an integer from 0 to 100"));
                None
            }
            None => {
                problems.push(format!("{key} is missing or not a number"));
                None
            }
        }
    };
    let intent = label(obj, "intent", Intent::parse, Intent::names(), &mut problems);
    let project_type = label(obj, "project_type", ProjectType::parse, ProjectType::names(), &mut problems);
    let urgency = label(obj, "urgency", Urgency::parse, Urgency::names(), &mut problems);
    let budget = label(obj, "budget", Budget::parse, Budget::names(), &mut problems);
    let sentiment = label(obj, "sentiment", Sentiment::parse, Sentiment::names(), &mut problems);
    let lead_score = percent("lead_score", &mut problems);
    let spam_likelihood = percent("spam_likelihood", &mut problems);
    let score_reasons: Option<Vec<String>> = match obj.get("score_reasons").and_then(Value::as_array) {
        Some(items) if items.iter().all(Value::is_string) => {
            Some(items.iter().filter_map(Value::as_str).take(5).map(str::to_owned).collect())
        }
        _ => {
            problems.push("score_reasons must be an array of strings".into());
            None
        }
    };
    let summary = match obj.get("summary").and_then(Value::as_str).map(str::trim) {
        Some(s) if !s.is_empty() && s.len() <= 600 => Some(s.to_owned()),
        _ => {
            problems.push("summary must be a non-empty string of at most two sentences".into());
            None
        }
    };
    let caller = match obj.get("caller") {
        None | Some(Value::Null) => Some(CallerDetails::default()),
        Some(v) => serde_json::from_value::<CallerDetails>(v.clone()).map(Some).unwrap_or_else(|e| {
            problems.push(format!("caller is not an object of strings: {e}"));
            None
        }),
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let clean = |s: Option<String>| s.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let caller = caller.unwrap_or_default();
    Ok(Findings {
        intent: intent.expect("checked"),
        project_type: project_type.expect("checked"),
        lead_score: lead_score.expect("checked"),
        score_reasons: score_reasons.expect("checked"),
        urgency: urgency.expect("checked"),
        budget: budget.expect("checked"),
        sentiment: sentiment.expect("checked"),
        spam_likelihood: spam_likelihood.expect("checked"),
        summary: summary.expect("checked"),
        caller: CallerDetails {
            name: clean(caller.name),
            email: clean(caller.email),
            zip: clean(caller.zip).filter(|z| z.len() == 5 && z.chars().all(|c| c.is_ascii_digit())),
            callback_time: clean(caller.callback_time),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"intent": "new_lead", "project_type": "kitchen", "lead_score": 82,
        "score_reasons": ["wants an estimate", "budget stated"], "urgency": "soon", "budget": "high",
        "sentiment": "positive", "spam_likelihood": 3, "summary": "Maria wants a kitchen remodel. Call back tomorrow.",
        "caller": {"name": "Maria", "zip": "75024", "callback_time": "tomorrow morning"}}"#;

    #[test]
    fn a_valid_answer_becomes_findings() {
        let f = validate_answer(GOOD).unwrap();
        assert_eq!(
            (f.intent, f.project_type, f.lead_score, f.spam_likelihood),
            (Intent::NewLead, ProjectType::Kitchen, 82, 3)
        );
        assert_eq!(f.caller.zip.as_deref(), Some("75024"));
        assert_eq!(score_band(f.lead_score), "high");
    }

    #[test]
    fn every_problem_is_named() {
        let bad =
            GOOD.replace(r#""kitchen""#, r#""spaceship""#).replace("82", "182").replace(r#""spam_likelihood": 3,"#, "");
        let problems = validate_answer(&bad).unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains("project_type \"spaceship\" is not one of kitchen")),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p.contains("lead_score 182")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("spam_likelihood is missing")), "{problems:?}");
        assert!(validate_answer("Sure! Here is the JSON").unwrap_err()[0].contains("not valid JSON"));
        assert!(validate_answer("[1]").unwrap_err()[0].contains("object"));
    }

    #[test]
    fn the_schema_lists_every_label() {
        let schema = response_schema();
        assert_eq!(schema["properties"]["project_type"]["enum"].as_array().unwrap().len(), ProjectType::ALL.len());
        assert_eq!(schema["properties"]["lead_score"]["maximum"], 100);
    }
}

/// What an LLM is asked: the instructions (system) and the call (user). The transcript is already redacted.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub system: String,
    pub user: String,
}

/// The prompt for one call of `company`, whose transcript (redacted, one `speaker: text` line per segment) is
/// `transcript`. The schema travels separately as the response schema; the instructions say what the fields mean.
pub fn prompt(company: &str, transcript: &str, quality_note: Option<&str>) -> Prompt {
    let system = format!(
        "You qualify inbound phone calls for {company}, a home remodeling company. Read the call transcript and answer \
         with one JSON object matching the response schema. intent: why the caller called (new_lead for a \
         prospective customer; existing_customer for someone whose work the company did or is doing; \
         vendor_solicitation for anyone selling to the company; spam_robocall for robocalls, scams and \
         telemarketing; wrong_number; job_seeker; other). project_type: the caller's main project ({projects}); none \
         when the call is not about a project. lead_score: 0-100, how likely this call becomes a paying job \
         (clear project, wants an estimate or a visit, urgency, budget, contact details raise it; vagueness, price \
         shopping and far-off timelines lower it; non-leads score under 10). score_reasons: up to five short \
         reasons. urgency: emergency (active damage), soon (weeks), flexible (months or just exploring), unknown. \
         budget: high (30,000 USD or more), medium (10,000-30,000), low (under 10,000), unknown. spam_likelihood: \
         0-100. summary: at most two sentences, no phone numbers, emails or street addresses. caller: the name, \
         ZIP code and preferred callback time the caller gave, omitted when not said. Bracketed placeholders such \
         as [card number] or [email] mark redacted text; never guess what they hid.",
        projects = ProjectType::names().join(", ")
    );
    let note = quality_note.map(|n| format!("Note: {n}\n")).unwrap_or_default();
    Prompt { system, user: format!("{note}Transcript:\n{transcript}") }
}

/// The follow-up turn when an answer did not validate: the problems, and the demand to answer again.
pub fn correction(problems: &[String]) -> String {
    format!(
        "Your answer was not valid: {}. Answer again with one JSON object that matches the response schema exactly.",
        problems.join("; ")
    )
}
