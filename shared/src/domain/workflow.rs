//! A tenant's workflow: what happens to an analysed call before (and after) it reaches the CRM. The spam gate,
//! the service area, the minimum score, and the notification rules, validated when the tenant is loaded; and the
//! verdict for one call. Pure: no I/O.

use serde::{Deserialize, Serialize};

use super::analysis::{Findings, ProjectType};
use super::geo;
use super::tenant::SecretRef;

/// `[tenant.workflow]` (the same document as JSON).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    #[serde(default)]
    pub spam: SpamGate,
    #[serde(default)]
    pub service_area: Option<ServiceArea>,
    /// Leads scoring below this are not pushed (kept as `skipped`); 0 pushes every lead that is not spam.
    #[serde(default)]
    pub min_score: u8,
    #[serde(default)]
    pub notifications: Vec<NotificationRule>,
}

/// Spam likelihood (0–100) at or above `threshold`: the call is spam and goes nowhere. From `review_from` up to the
/// threshold: pushed, flagged for review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpamGate {
    #[serde(default = "default_spam_threshold")]
    pub threshold: u8,
    #[serde(default = "default_review_from")]
    pub review_from: u8,
}

fn default_spam_threshold() -> u8 {
    80
}
fn default_review_from() -> u8 {
    50
}

impl Default for SpamGate {
    fn default() -> Self {
        Self { threshold: default_spam_threshold(), review_from: default_review_from() }
    }
}

/// Where the tenant works: ZIP codes, and/or a radius around the office. A lead is inside when either says so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceArea {
    #[serde(default)]
    pub zips: Vec<String>,
    #[serde(default)]
    pub office: Option<Office>,
    #[serde(default)]
    pub radius_miles: Option<f64>,
    /// What happens to a lead outside the area.
    #[serde(default)]
    pub outside: Outside,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Office {
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outside {
    /// Pushed with the tag `out-of-area`, flagged for review.
    #[default]
    Tag,
    /// Not pushed (`skipped`).
    Skip,
}

/// Which event a rule listens to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOn {
    /// A lead was delivered (pushed to the CRM, or accepted with no CRM configured).
    #[default]
    Lead,
    /// The CRM refused a lead for good (it is dead-lettered): the tenant must act.
    CrmFailed,
}

/// A notification rule, e.g. "score ≥ 80 → Slack #sales now".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationRule {
    pub name: String,
    #[serde(default)]
    pub on: NotifyOn,
    /// Lead rules: only leads scoring at least this.
    #[serde(default)]
    pub min_score: Option<u8>,
    /// Lead rules: only these project types (empty: any).
    #[serde(default)]
    pub project_types: Vec<ProjectType>,
    /// Lead rules: also leads flagged for review (default true).
    #[serde(default = "yes")]
    pub include_review: bool,
    #[serde(default)]
    pub slack: Option<SlackTarget>,
    #[serde(default)]
    pub email: Option<EmailTarget>,
}

fn yes() -> bool {
    true
}

/// A Slack incoming webhook; its URL is the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackTarget {
    pub webhook: SecretRef,
}

/// Email through SendGrid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailTarget {
    pub to: Vec<String>,
    pub from: String,
    pub api_key: SecretRef,
}

/// Where one notification goes (the payload of a notification work item keeps this, never a secret's value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "channel", rename_all = "snake_case")]
pub enum NoticeAddress {
    Slack { webhook: SecretRef },
    Email { to: Vec<String>, from: String, api_key: SecretRef },
}

impl NoticeAddress {
    pub fn channel(&self) -> &'static str {
        match self {
            Self::Slack { .. } => "slack",
            Self::Email { .. } => "email",
        }
    }
    pub fn credential(&self) -> &SecretRef {
        match self {
            Self::Slack { webhook } => webhook,
            Self::Email { api_key, .. } => api_key,
        }
    }
}

/// A message for people: a title, a few lines, and labelled facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub title: String,
    pub text: String,
    pub fields: Vec<(String, String)>,
}

impl NotificationRule {
    pub fn addresses(&self) -> Vec<NoticeAddress> {
        let mut out = vec![];
        if let Some(s) = &self.slack {
            out.push(NoticeAddress::Slack { webhook: s.webhook.clone() });
        }
        if let Some(e) = &self.email {
            out.push(NoticeAddress::Email { to: e.to.clone(), from: e.from.clone(), api_key: e.api_key.clone() });
        }
        out
    }

    /// Whether a delivered lead with these findings wakes this rule.
    pub fn matches_lead(&self, findings: &Findings, review: bool) -> bool {
        self.on == NotifyOn::Lead
            && self.min_score.is_none_or(|min| findings.lead_score >= min)
            && (self.project_types.is_empty() || self.project_types.contains(&findings.project_type))
            && (self.include_review || !review)
    }
}

/// What the workflow decides for one analysed call.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Push { review: bool, tags: Vec<String> },
    Spam { reason: String },
    Skip { reason: String },
}

impl Workflow {
    pub fn validate(&self) -> Result<(), String> {
        let s = &self.spam;
        if s.threshold > 100 || s.review_from > s.threshold {
            return Err(format!(
                "workflow.spam: need review_from ≤ threshold ≤ 100 (got review_from {}, threshold {})",
                s.review_from, s.threshold
            ));
        }
        if self.min_score > 100 {
            return Err(format!("workflow.min_score {} is above 100", self.min_score));
        }
        if let Some(area) = &self.service_area {
            for zip in &area.zips {
                if zip.len() != 5 || !zip.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("workflow.service_area.zips: {zip:?} is not a 5-digit ZIP code"));
                }
            }
            match (&area.office, area.radius_miles) {
                (Some(o), Some(r)) => {
                    if !(-90.0..=90.0).contains(&o.lat) || !(-180.0..=180.0).contains(&o.lon) {
                        return Err(format!("workflow.service_area.office ({}, {}) is not a place", o.lat, o.lon));
                    }
                    if !(r > 0.0 && r <= 500.0) {
                        return Err(format!("workflow.service_area.radius_miles {r} is not within (0, 500]"));
                    }
                }
                (None, None) if area.zips.is_empty() => {
                    return Err("workflow.service_area names no zips and no office + radius_miles".into());
                }
                (None, None) => {}
                _ => return Err("workflow.service_area: office and radius_miles go together".into()),
            }
        }
        let mut names = std::collections::HashSet::new();
        for rule in &self.notifications {
            let at = format!("workflow.notifications[{:?}]", rule.name);
            if rule.name.trim().is_empty() {
                return Err("workflow.notifications: a rule has an empty name".into());
            }
            if !names.insert(rule.name.as_str()) {
                return Err(format!("{at}: the name is used twice"));
            }
            if rule.slack.is_none() && rule.email.is_none() {
                return Err(format!("{at}: names neither slack nor email"));
            }
            if let Some(e) = &rule.email {
                if e.to.is_empty() {
                    return Err(format!("{at}.email.to is empty"));
                }
                if let Some(bad) = e.to.iter().chain([&e.from]).find(|a| !looks_like_email(a)) {
                    return Err(format!("{at}.email: {bad:?} is not an email address"));
                }
            }
            if rule.min_score.is_some_and(|m| m > 100) {
                return Err(format!("{at}.min_score is above 100"));
            }
        }
        Ok(())
    }

    /// The verdict for a call with these findings; `zip` is the caller's, when known.
    pub fn decide(&self, findings: &Findings, zip: Option<&str>) -> Verdict {
        let spam = findings.spam_likelihood;
        if spam >= self.spam.threshold {
            return Verdict::Spam { reason: format!("spam likelihood {spam} ≥ {}", self.spam.threshold) };
        }
        let mut tags = vec![];
        let mut review = false;
        if spam >= self.spam.review_from {
            review = true;
            tags.push("possible-spam".to_owned());
        }
        if findings.lead_score < self.min_score {
            return Verdict::Skip {
                reason: format!("lead score {} below the minimum {}", findings.lead_score, self.min_score),
            };
        }
        if let Some(area) = &self.service_area {
            match area.contains(zip) {
                Some(true) => {}
                Some(false) if area.outside == Outside::Skip => {
                    return Verdict::Skip { reason: "outside the service area".into() };
                }
                Some(false) => {
                    review = true;
                    tags.push("out-of-area".into());
                }
                None => tags.push("area-unknown".into()),
            }
        }
        if review {
            tags.push("review".into());
        }
        Verdict::Push { review, tags }
    }
}

impl ServiceArea {
    /// Inside, outside, or unknown (no ZIP, or a ZIP neither listed nor placeable when only a radius is set).
    pub fn contains(&self, zip: Option<&str>) -> Option<bool> {
        let zip = zip.map(|z| z.trim().get(..5).unwrap_or(z)).filter(|z| z.len() == 5)?;
        if self.zips.iter().any(|z| z == zip) {
            return Some(true);
        }
        match (self.office, self.radius_miles) {
            (Some(o), Some(r)) => {
                let (lat, lon) = geo::zip_centroid(zip)?;
                Some(geo::miles_between((o.lat, o.lon), (lat, lon)) <= r)
            }
            _ => Some(false),
        }
    }
}

fn looks_like_email(a: &str) -> bool {
    let Some((local, domain)) = a.split_once('@') else { return false };
    !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !a.contains(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::analysis::{Budget, CallerDetails, Intent, Sentiment, Urgency};
    use serde_json::json;

    fn findings(score: u8, spam: u8, project: ProjectType) -> Findings {
        Findings {
            intent: Intent::NewLead,
            project_type: project,
            lead_score: score,
            score_reasons: vec![],
            urgency: Urgency::Soon,
            budget: Budget::Unknown,
            sentiment: Sentiment::Positive,
            spam_likelihood: spam,
            summary: "Kitchen remodel.".into(),
            caller: CallerDetails::default(),
        }
    }

    fn workflow(v: serde_json::Value) -> Workflow {
        let w: Workflow = serde_json::from_value(v).unwrap();
        w.validate().unwrap();
        w
    }

    #[test]
    fn spam_gate_and_review_band() {
        let w = Workflow::default();
        assert!(matches!(w.decide(&findings(20, 90, ProjectType::None), None), Verdict::Spam { .. }));
        assert_eq!(
            w.decide(&findings(60, 55, ProjectType::Kitchen), None),
            Verdict::Push { review: true, tags: vec!["possible-spam".into(), "review".into()] }
        );
        assert_eq!(
            w.decide(&findings(60, 10, ProjectType::Kitchen), None),
            Verdict::Push { review: false, tags: vec![] }
        );
    }

    #[test]
    fn minimum_score_skips() {
        let w = workflow(json!({"min_score": 40}));
        assert!(
            matches!(w.decide(&findings(39, 0, ProjectType::Deck), None), Verdict::Skip { reason } if reason.contains("39"))
        );
        assert!(matches!(w.decide(&findings(40, 0, ProjectType::Deck), None), Verdict::Push { .. }));
    }

    #[test]
    fn service_area_by_zip_and_by_distance() {
        // Portland's office; 97201 is downtown, 97330 (Corvallis) ~75 miles south, 10001 is Manhattan.
        let w = workflow(json!({"service_area": {"zips": ["98660"], "office": {"lat": 45.52, "lon": -122.68},
            "radius_miles": 30, "outside": "skip"}}));
        let f = findings(70, 0, ProjectType::Kitchen);
        assert_eq!(w.decide(&f, Some("98660")), Verdict::Push { review: false, tags: vec![] });
        assert_eq!(w.decide(&f, Some("97201")), Verdict::Push { review: false, tags: vec![] });
        assert!(matches!(w.decide(&f, Some("97330")), Verdict::Skip { .. }));
        assert!(matches!(w.decide(&f, Some("10001")), Verdict::Skip { .. }));
        assert_eq!(w.decide(&f, None), Verdict::Push { review: false, tags: vec!["area-unknown".into()] });
        let tagging = workflow(json!({"service_area": {"zips": ["98660"]}}));
        assert_eq!(
            tagging.decide(&f, Some("10001-2345")),
            Verdict::Push { review: true, tags: vec!["out-of-area".into(), "review".into()] }
        );
    }

    #[test]
    fn rules_match_on_score_project_and_review() {
        let w = workflow(json!({"notifications": [
            {"name": "hot", "min_score": 80, "project_types": ["kitchen", "bathroom"], "include_review": false,
             "slack": {"webhook": "env:SLACK"}}]}));
        let rule = &w.notifications[0];
        assert!(rule.matches_lead(&findings(85, 0, ProjectType::Kitchen), false));
        assert!(!rule.matches_lead(&findings(79, 0, ProjectType::Kitchen), false));
        assert!(!rule.matches_lead(&findings(85, 0, ProjectType::Roofing), false));
        assert!(!rule.matches_lead(&findings(85, 0, ProjectType::Kitchen), true));
    }

    #[test]
    fn bad_workflows_say_why() {
        let bad = |v: serde_json::Value| serde_json::from_value::<Workflow>(v).unwrap().validate().unwrap_err();
        assert!(bad(json!({"spam": {"threshold": 40, "review_from": 60}})).contains("review_from ≤ threshold"));
        assert!(bad(json!({"service_area": {"zips": ["9720"]}})).contains("not a 5-digit ZIP"));
        assert!(bad(json!({"service_area": {"radius_miles": 20}})).contains("go together"));
        assert!(bad(json!({"notifications": [{"name": "x"}]})).contains("neither slack nor email"));
        assert!(
            bad(json!({"notifications": [{"name": "x", "email": {"to": ["sales"], "from": "a@b.co",
                "api_key": "env:K"}}]}))
            .contains("\"sales\" is not an email")
        );
        let unknown = serde_json::from_value::<Workflow>(json!({"spam_gate": {}})).unwrap_err().to_string();
        assert!(unknown.contains("unknown field `spam_gate`"), "{unknown}");
    }
}
