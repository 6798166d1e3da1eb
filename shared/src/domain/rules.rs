//! The rules analyzer: lexicons of phrases per project type, spam and robocall patterns, urgency and budget cues,
//! and a scoring rubric. The embedded default, and the fallback whenever the LLM fails, times out or its circuit
//! is open. It reads the redacted transcript; contact details are extracted separately from the raw text
//! (`extract_contact`) and only ever go to fields. Pure: no I/O.

use serde::{Deserialize, Serialize};

use super::analysis::{Budget, CallerDetails, Findings, Intent, ProjectType, Sentiment, Urgency};
use super::transcript::{Segment, Speaker};

pub const RULES_ANALYZER: &str = "rules/1";

/// The scoring rubric's weights, per tenant (`[tenant.analysis.weights]`). A new lead starts at `base`; each
/// signal adds its weight; vagueness subtracts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreWeights {
    pub base: f64,
    /// A project the company does was named.
    pub project: f64,
    /// The caller asked for an estimate, a quote or a visit.
    pub estimate: f64,
    /// Emergency gets all of it, "soon" half.
    pub urgency: f64,
    /// A budget was stated (high gets all of it, medium two thirds, low a third).
    pub budget: f64,
    /// The caller left a name or a callback time.
    pub contact: f64,
    /// The caller gave the project's address (a visit is on its way).
    pub address: f64,
    /// A small job: a few repairs, a handyman list, "a few thousand".
    pub small_job: f64,
    /// Early research, price shopping, a far-off timeline.
    pub vague: f64,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        Self {
            base: 40.0,
            project: 15.0,
            estimate: 12.0,
            urgency: 15.0,
            budget: 10.0,
            contact: 6.0,
            address: 8.0,
            small_job: 12.0,
            vague: 20.0,
        }
    }
}

/// What the analyzer knows about the call besides its words.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallFacts {
    pub voicemail: bool,
}

/// Lower-case words of a text, apostrophes kept, everything else a separator.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '$'))
        .filter(|w| !w.is_empty())
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Positions where `phrase` (space-separated words; a trailing `*` matches any word with that prefix) occurs.
fn find(words: &[String], phrase: &str) -> Vec<usize> {
    let parts: Vec<&str> = phrase.split(' ').collect();
    if parts.is_empty() || words.len() < parts.len() {
        return Vec::new();
    }
    (0..=words.len() - parts.len())
        .filter(|&i| {
            parts.iter().enumerate().all(|(k, p)| match p.strip_suffix('*') {
                Some(prefix) => words[i + k].starts_with(prefix),
                None => words[i + k] == *p,
            })
        })
        .collect()
}

fn count(words: &[String], phrases: &[&str]) -> usize {
    phrases.iter().map(|p| find(words, p).len()).sum()
}

fn any(words: &[String], phrases: &[&str]) -> bool {
    phrases.iter().any(|p| !find(words, p).is_empty())
}

/// Weighted phrases per project type.
const PROJECTS: &[(ProjectType, &[(&str, f64)])] = &[
    (
        ProjectType::Kitchen,
        &[
            ("kitchen", 2.0),
            ("kitchen remodel*", 2.0),
            ("cabinet*", 2.5),
            ("countertop*", 2.5),
            ("counter top*", 2.5),
            ("backsplash", 2.0),
            ("island", 1.5),
            ("granite", 1.0),
            ("quartz", 1.0),
            ("pantry", 1.0),
        ],
    ),
    (
        ProjectType::Bathroom,
        &[
            ("bathroom*", 2.5),
            ("bath", 2.0),
            ("baths", 2.0),
            ("shower", 2.0),
            ("tub", 2.0),
            ("bathtub", 2.0),
            ("vanity", 2.0),
            ("toilet", 1.0),
            ("walk in shower", 1.5),
            ("master bath*", 1.5),
        ],
    ),
    (
        ProjectType::Roofing,
        &[
            ("roof*", 3.0),
            ("shingle*", 2.5),
            ("reroof", 3.0),
            ("leak*", 1.0),
            ("hail", 1.5),
            ("gutter*", 1.0),
            ("flashing", 1.5),
            ("skylight*", 1.0),
            ("tarp", 1.0),
        ],
    ),
    (
        ProjectType::Windows,
        &[
            ("window*", 3.0),
            ("patio door*", 2.0),
            ("sliding door*", 2.0),
            ("front door", 2.0),
            ("entry door", 2.0),
            ("french door*", 2.0),
            ("double pane", 1.5),
            ("drafty", 1.0),
        ],
    ),
    (
        ProjectType::Flooring,
        &[
            ("floor*", 1.5),
            ("flooring", 1.5),
            ("hardwood", 3.0),
            ("laminate", 2.5),
            ("vinyl plank", 2.5),
            ("lvp", 2.5),
            ("carpet*", 2.5),
            ("tile floor*", 2.0),
            ("refinish*", 1.5),
            ("subfloor", 1.5),
        ],
    ),
    (
        ProjectType::Addition,
        &[
            ("addition", 4.0),
            ("add on", 3.0),
            ("add a room", 3.0),
            ("sunroom", 5.0),
            ("sun room", 5.0),
            ("second story", 4.0),
            ("second floor", 2.0),
            ("in law suite", 4.0),
            ("mother in law", 3.0),
            ("bump out", 3.0),
            ("extension", 2.0),
            ("adu", 3.0),
            ("square footage", 1.5),
        ],
    ),
    (
        ProjectType::Basement,
        &[
            ("basement", 4.0),
            ("lower level", 3.0),
            ("egress", 2.0),
            ("finish the basement", 2.0),
            ("rec room", 1.5),
            ("waterproof*", 1.5),
        ],
    ),
    (
        ProjectType::Deck,
        &[
            ("deck", 4.0),
            ("decking", 3.0),
            ("patio", 2.5),
            ("pergola", 3.0),
            ("porch", 2.0),
            ("composite", 1.5),
            ("railing*", 1.0),
        ],
    ),
    (
        ProjectType::Siding,
        &[("siding", 4.5), ("hardie*", 3.0), ("vinyl siding", 2.0), ("soffit*", 2.0), ("fascia", 2.0), ("trim", 1.0)],
    ),
    (
        ProjectType::Other,
        &[
            ("paint*", 3.0),
            ("garage", 2.0),
            ("convert*", 2.0),
            ("home office", 2.0),
            ("fence", 3.0),
            ("drywall", 2.0),
            ("whole house", 3.0),
            ("whole home", 3.0),
            ("gut renovation", 3.0),
            ("renovat*", 0.5),
            ("handyman", 2.5),
            ("attic", 2.0),
            ("fireplace", 2.0),
        ],
    ),
];

/// Words that make the next project words the one wanted ("need a new roof"), or a finished one ("did our kitchen").
const WANT: &[&str] = &[
    "need",
    "needs",
    "want",
    "wanting",
    "looking",
    "redo",
    "remodel",
    "replace",
    "replacing",
    "fix",
    "repair",
    "install",
    "build",
    "finish",
    "finishing",
    "quote",
    "estimate",
    "new",
    "add",
    "adding",
    "update",
    "redoing",
    "interested",
];
const DONE: &[&str] = &["did", "done", "last", "already", "finished", "had", "redid", "before"];

const SPAM: &[(&str, u32)] = &[
    ("press one", 60),
    ("press 1", 60),
    ("press two", 40),
    ("press 2", 40),
    ("press nine", 40),
    ("press 9", 40),
    ("extended warranty", 60),
    ("vehicle warranty", 60),
    ("car warranty", 60),
    ("auto warranty", 60),
    ("google listing", 55),
    ("google business", 50),
    ("business listing", 50),
    ("google maps", 30),
    ("verify your", 30),
    ("first page of google", 60),
    ("search engine", 45),
    ("seo", 45),
    ("cash advance", 60),
    ("merchant", 35),
    ("business loan", 50),
    ("working capital", 50),
    ("pre approved", 35),
    ("preapproved", 35),
    ("recorded message", 50),
    ("this is a recorded", 50),
    ("final notice", 50),
    ("final attempt", 45),
    ("to be removed", 45),
    ("removed from our list", 45),
    ("do not call list", 30),
    ("lower your rate*", 40),
    ("credit card processing", 50),
    ("lead generation", 55),
    ("exclusive lead*", 55),
    ("leads for contractors", 55),
    ("homeowner leads", 45),
    ("marketing agency", 45),
    ("digital marketing", 45),
    ("more customers", 30),
    ("more jobs", 25),
    ("online reviews", 30),
    ("suspended", 30),
    ("first page", 45),
    ("ranking*", 40),
    ("competitors", 25),
    ("audit", 20),
    ("guarantee first", 40),
    ("disconnect*", 40),
    ("shut off your", 40),
    ("past due", 35),
    ("prepaid card*", 50),
    ("gift card*", 50),
    ("zelle", 35),
    ("limited time", 25),
    ("congratulations", 30),
    ("free cruise", 60),
    ("social security administration", 60),
];

/// A company selling to the business rather than a scam: still spam for the pipeline, `vendor_solicitation`.
const VENDOR: &[&str] = &[
    "sales rep",
    "account manager",
    "supplier",
    "supply",
    "distributor",
    "lumber",
    "wholesale",
    "our company",
    "we help contractors",
    "we work with contractors",
    "partner with",
    "contractors like you",
    "owner of the business",
    "business owner",
    "decision maker",
    "the owner",
    "owner available",
    "for contractors",
    "roofing contractors",
    "our customers",
    "a demo",
    "minute demo",
    "your estimating",
    "per report",
    "in charge of",
    "who handles your",
    "pricing for your",
    "your crews",
    "lead generation",
    "exclusive lead*",
    "leads for contractors",
    "marketing",
    "advertising",
    "seo",
];

const WRONG_NUMBER: &[&str] = &[
    "wrong number",
    "must have dialed",
    "dialed wrong",
    "misdial*",
    "isn't this",
    "is this not",
    "not the pizza",
    "i was trying to reach",
    "i was trying to call",
    "sorry to bother",
    "wrong place",
];

const JOB_SEEKER: &[&str] = &[
    "hiring",
    "looking for work",
    "looking for a job",
    "any openings",
    "job opening*",
    "apply",
    "application",
    "resume",
    "my experience",
    "years of experience",
    "work for you",
    "join your",
];

const EXISTING: &[&str] = &[
    "you guys did",
    "you did our",
    "you all did",
    "your crew",
    "your guys",
    "the guys were",
    "the crew was",
    "warranty on",
    "under warranty",
    "the job you",
    "the work you",
    "my project",
    "our project",
    "project manager",
    "invoice",
    "final payment",
    "scheduled for",
    "we're a customer",
    "existing customer",
    "current customer",
    "already a customer",
    "follow up on",
    "you guys are doing",
    "you're doing our",
    "you built",
    "signed the contract",
    "the deposit",
    "tile guy",
    "following up on",
    "punch list",
    "touch up",
];

const ESTIMATE: &[&str] = &[
    "estimate",
    "quote",
    "come out",
    "come by",
    "take a look",
    "look at it",
    "consultation",
    "appointment",
    "bid",
    "price",
    "pricing",
    "how much",
    "send someone",
    "someone out",
    "set up a time",
];

const EMERGENCY: &[&str] = &[
    "emergency",
    "leaking",
    "leak",
    "water coming in",
    "water is coming",
    "flooded",
    "flooding",
    "storm damage",
    "tree fell",
    "asap",
    "right away",
    "immediately",
    "urgent",
    "tarp",
    "caved",
    "collapsed",
];
const SOON: &[&str] = &[
    "soon",
    "this week",
    "next week",
    "this month",
    "couple weeks",
    "few weeks",
    "before the holidays",
    "before winter",
    "before summer",
    "quickly",
    "as fast",
    "ready to",
    "ready to go",
    "closing on",
    "moving in",
    "selling the house",
    "listing",
    "before the",
    "by the",
    "by memorial",
    "by christmas",
    "by thanksgiving",
    "three weeks",
    "two weeks",
    "month or two",
    "next month",
    "sooner",
    "the sooner",
];
const FLEXIBLE: &[&str] = &[
    "no rush",
    "next year",
    "sometime",
    "some time",
    "just looking",
    "just curious",
    "just getting",
    "ballpark",
    "thinking about",
    "down the road",
    "eventually",
    "few months",
    "in the spring",
    "not sure yet",
    "price shopping",
    "getting some ideas",
    "rough idea",
    "just exploring",
    "not urgent",
    "not an emergency",
    "shopping around",
    "other quotes",
    "couple quotes",
    "whenever",
    "no hurry",
    "someday",
    "one day",
];

const SMALL_JOB: &[&str] = &[
    "small stuff",
    "small things",
    "small job",
    "a few boards",
    "few of the boards",
    "couple of small",
    "honey do",
    "minor",
    "just those",
    "few thousand",
    "a couple thousand",
    "patch",
];

/// "not leaking", "isn't urgent": a cue right after a negation does not count.
fn any_unnegated(words: &[String], phrases: &[&str]) -> bool {
    phrases.iter().any(|p| {
        find(words, p).into_iter().any(|at| {
            !words[at.saturating_sub(3)..at]
                .iter()
                .any(|w| ["not", "no", "isn't", "isnt", "never", "wasn't"].contains(&w.as_str()))
        })
    })
}

const POSITIVE: &[&str] =
    &["great", "love", "excited", "awesome", "thank you so much", "recommended", "happy", "perfect"];
const NEGATIVE: &[&str] = &[
    "frustrated",
    "upset",
    "terrible",
    "disappointed",
    "angry",
    "unhappy",
    "complaint",
    "never showed",
    "still waiting",
    "not happy",
    "ridiculous",
];

/// Money the caller mentioned, in dollars: "$15,000", "15k", "thirty grand", "fifty thousand".
fn largest_amount(text: &str) -> Option<f64> {
    let ws = words(&text.replace(',', ""));
    let mut best: Option<f64> = None;
    const SMALL: [(&str, f64); 28] = [
        ("one", 1.0),
        ("two", 2.0),
        ("three", 3.0),
        ("four", 4.0),
        ("five", 5.0),
        ("six", 6.0),
        ("seven", 7.0),
        ("eight", 8.0),
        ("nine", 9.0),
        ("ten", 10.0),
        ("eleven", 11.0),
        ("twelve", 12.0),
        ("thirteen", 13.0),
        ("fourteen", 14.0),
        ("fifteen", 15.0),
        ("sixteen", 16.0),
        ("seventeen", 17.0),
        ("eighteen", 18.0),
        ("nineteen", 19.0),
        ("twenty", 20.0),
        ("thirty", 30.0),
        ("forty", 40.0),
        ("fifty", 50.0),
        ("sixty", 60.0),
        ("seventy", 70.0),
        ("eighty", 80.0),
        ("ninety", 90.0),
        ("hundred", 100.0),
    ];
    let number = |w: &str| -> Option<f64> {
        let w = w.trim_start_matches('$');
        if let Some(k) = w.strip_suffix('k') {
            return k.parse::<f64>().ok().map(|v| v * 1000.0);
        }
        w.parse::<f64>().ok().or_else(|| SMALL.iter().find(|(s, _)| *s == w).map(|(_, v)| *v))
    };
    for (i, w) in ws.iter().enumerate() {
        let Some(mut value) = number(w) else { continue };
        // "twenty five thousand": a tens word and a unit before the multiplier.
        let mut j = i + 1;
        if (20.0..100.0).contains(&value)
            && let Some(unit) = ws.get(j).and_then(|n| number(n)).filter(|u| *u < 10.0)
        {
            value += unit;
            j += 1;
        }
        let next = ws.get(j).map(String::as_str);
        let amount = match next {
            Some("thousand" | "grand" | "k") => value * 1000.0,
            Some("hundred") if ws.get(j + 1).map(String::as_str) == Some("thousand") => value * 100_000.0,
            _ if w.starts_with('$') || w.ends_with('k') => value,
            _ if next == Some("dollars") => value,
            _ => continue,
        };
        if amount >= 500.0 {
            best = Some(best.map_or(amount, |b: f64| b.max(amount)));
        }
    }
    best
}

fn project_scores(caller: &[String], business: &[String]) -> Vec<(ProjectType, f64)> {
    let mut scores: Vec<(ProjectType, f64)> = PROJECTS
        .iter()
        .map(|(project, lexicon)| {
            let mut score = 0.0;
            for (phrase, weight) in lexicon.iter() {
                for at in find(caller, phrase) {
                    let before = &caller[at.saturating_sub(5)..at];
                    let factor = if before.iter().any(|w| DONE.contains(&w.as_str())) {
                        0.25
                    } else if before.iter().any(|w| WANT.contains(&w.as_str())) {
                        1.6
                    } else {
                        1.0
                    };
                    score += weight * factor;
                }
                // The business's words count a little: it repeats what it heard ("a new roof, got it").
                score += weight * 0.3 * find(business, phrase).len() as f64;
            }
            (*project, score)
        })
        .collect();
    scores.sort_by(|a, b| b.1.total_cmp(&a.1));
    scores
}

/// Analyse a (redacted) transcript.
pub fn analyze(segments: &[Segment], facts: CallFacts, weights: &ScoreWeights) -> Findings {
    let join = |f: &dyn Fn(Speaker) -> bool| {
        segments.iter().filter(|s| f(s.speaker)).map(|s| s.text.as_str()).collect::<Vec<_>>().join(" ")
    };
    let caller_text = join(&|s| s != Speaker::Business);
    let business_text = join(&|s| s == Speaker::Business);
    let caller = words(&caller_text);
    let business = words(&business_text);
    let has_business = !business.is_empty();

    // Spam: patterns, and the shape of a robocall (a recording talking, nobody answering it).
    let mut spam: u32 = SPAM.iter().map(|(p, w)| find(&caller, p).len().min(2) as u32 * w).sum();
    if !has_business && any(&caller, &["press", "recorded", "this call"]) {
        spam += 20;
    }
    let vendor_hits = count(&caller, VENDOR);
    if vendor_hits >= 2 {
        spam += 25 * vendor_hits.min(4) as u32;
    }
    let spam_likelihood = spam.min(97) as u8;

    let projects = project_scores(&caller, &business);
    let (top, top_score) = projects[0];
    let project_named = top_score >= 2.0;
    let estimate = any(&caller, ESTIMATE);
    let existing = count(&caller, EXISTING);

    let intent = if spam_likelihood >= 50 {
        if vendor_hits >= 2 && !any(&caller, &["press one", "press 1", "warranty", "cash advance"]) {
            Intent::VendorSolicitation
        } else {
            Intent::SpamRobocall
        }
    } else if any(&caller, WRONG_NUMBER) && !(project_named && estimate) {
        Intent::WrongNumber
    } else if count(&caller, JOB_SEEKER) >= 2 && !estimate {
        Intent::JobSeeker
    } else if existing >= 1 && !(estimate && project_named && existing < 2) {
        Intent::ExistingCustomer
    } else if project_named || estimate {
        Intent::NewLead
    } else {
        Intent::Other
    };
    let project_type = match intent {
        Intent::NewLead | Intent::ExistingCustomer | Intent::Other if project_named => top,
        Intent::NewLead => ProjectType::Other,
        _ => ProjectType::None,
    };

    // An explicit "no rush" outweighs a season named in the same breath; active damage outweighs both.
    let urgency = if any_unnegated(&caller, EMERGENCY) {
        Urgency::Emergency
    } else if any(&caller, FLEXIBLE) {
        Urgency::Flexible
    } else if any_unnegated(&caller, SOON) {
        Urgency::Soon
    } else {
        Urgency::Unknown
    };
    let budget = match largest_amount(&caller_text) {
        Some(a) if a >= 30_000.0 => Budget::High,
        Some(a) if a >= 10_000.0 => Budget::Medium,
        Some(_) => Budget::Low,
        None => Budget::Unknown,
    };
    let (pos, neg) = (count(&caller, POSITIVE), count(&caller, NEGATIVE));
    let sentiment = match pos.cmp(&neg) {
        std::cmp::Ordering::Greater => Sentiment::Positive,
        std::cmp::Ordering::Less => Sentiment::Negative,
        std::cmp::Ordering::Equal => Sentiment::Neutral,
    };
    let contact = extract_contact(segments);

    // The rubric.
    let mut reasons = Vec::new();
    let score = match intent {
        Intent::NewLead => {
            let mut s = weights.base;
            if project_named {
                s += weights.project;
                reasons.push(format!("asks about a {} project", top.as_str()));
            }
            if estimate {
                s += weights.estimate;
                reasons.push("wants an estimate or a visit".into());
            }
            match urgency {
                Urgency::Emergency => {
                    s += weights.urgency;
                    reasons.push("urgent: damage or an emergency".into());
                }
                Urgency::Soon => {
                    s += weights.urgency / 2.0;
                    reasons.push("wants it done soon".into());
                }
                Urgency::Flexible => {
                    s -= weights.vague;
                    reasons.push("early research or a far-off timeline".into());
                }
                Urgency::Unknown => {}
            }
            match budget {
                Budget::High => s += weights.budget,
                Budget::Medium => s += weights.budget * 2.0 / 3.0,
                Budget::Low => s += weights.budget / 3.0,
                Budget::Unknown => {}
            }
            if budget != Budget::Unknown {
                reasons.push(format!("stated a {} budget", budget.as_str()));
            }
            if contact.name.is_some() || contact.callback_time.is_some() {
                s += weights.contact;
                reasons.push("left a name or a callback time".into());
            }
            // Redaction left its mark where the caller gave the project's address.
            if caller_text.contains(super::redact::Kind::Address.placeholder()) {
                s += weights.address;
                reasons.push("gave the project's address".into());
            }
            if any(&caller, SMALL_JOB) {
                s -= weights.small_job;
                reasons.push("a small job".into());
            }
            if facts.voicemail && !project_named {
                s -= weights.vague / 2.0;
            }
            s
        }
        Intent::ExistingCustomer => {
            reasons.push("an existing customer".into());
            if project_named && (estimate || any(&caller, &["want to add", "we want", "we'd like", "also want"])) {
                reasons.push("asks about more work".into());
                45.0
            } else {
                25.0
            }
        }
        Intent::Other => {
            reasons.push("no project or request identified".into());
            20.0
        }
        Intent::WrongNumber => {
            reasons.push("a wrong number".into());
            2.0
        }
        Intent::JobSeeker => {
            reasons.push("looking for a job, not a customer".into());
            5.0
        }
        Intent::VendorSolicitation => {
            reasons.push("a vendor selling to the company".into());
            3.0
        }
        Intent::SpamRobocall => {
            reasons.push("spam or a robocall".into());
            0.0
        }
    };
    // A real lead with a named project is at least a medium one, however vague.
    let floor = if intent == Intent::NewLead && project_named { 40.0 } else { 0.0 };
    let lead_score = score.clamp(floor, 100.0).round() as u8;
    Findings {
        intent,
        project_type,
        lead_score,
        score_reasons: reasons,
        urgency,
        budget,
        sentiment,
        spam_likelihood,
        summary: summary(intent, project_type, urgency, &contact, facts.voicemail),
        caller: contact,
    }
}

/// The summary the rules would write for these findings about a caller who gave no details: what an erased
/// caller's analysis keeps.
pub fn retold_summary(f: &Findings) -> String {
    summary(f.intent, f.project_type, f.urgency, &CallerDetails::default(), false)
}

fn summary(intent: Intent, project: ProjectType, urgency: Urgency, c: &CallerDetails, voicemail: bool) -> String {
    let who = c.name.clone().unwrap_or_else(|| "The caller".into());
    let what = match intent {
        Intent::NewLead if project == ProjectType::Other => format!("{who} asked about a project."),
        Intent::NewLead => format!("{who} asked about a {} project.", project.as_str()),
        Intent::ExistingCustomer => format!("{who} is an existing customer with a question."),
        Intent::VendorSolicitation => "A vendor called to sell to the company.".to_owned(),
        Intent::SpamRobocall => "Spam or a robocall.".to_owned(),
        Intent::WrongNumber => "A wrong number.".to_owned(),
        Intent::JobSeeker => format!("{who} is looking for work."),
        Intent::Other => format!("{who} called; no project was identified."),
    };
    let when = match (&c.callback_time, urgency) {
        (Some(t), _) => format!(" Call back: {t}."),
        (None, Urgency::Emergency) => " It is urgent.".to_owned(),
        _ if voicemail => " Left a voicemail.".to_owned(),
        _ => String::new(),
    };
    format!("{what}{when}")
}

const TIME_WORDS: &[&str] = &[
    "today",
    "tonight",
    "tomorrow",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "weekend",
    "morning",
    "afternoon",
    "evening",
    "anytime",
];

/// Contact details from the caller's own words (the raw transcript: this runs before redaction, locally, and
/// its output goes to fields only): name ("this is Maria", "my name is …"), email, ZIP code, callback time.
pub fn extract_contact(segments: &[Segment]) -> CallerDetails {
    let text: String = segments
        .iter()
        .filter(|s| s.speaker != Speaker::Business)
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let raw: Vec<&str> = text.split_whitespace().collect();
    let low: Vec<String> = raw
        .iter()
        // Surrounding punctuation off; '@' and inner dots stay (emails).
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric() && c != '@' && c != '.').trim_end_matches('.').to_lowercase()
        })
        .collect();
    let clean = |w: &str| w.trim_matches(|c: char| !c.is_alphanumeric()).to_owned();
    let mut details = CallerDetails::default();
    for i in 0..low.len() {
        // Name: "my name is Maria Lopez", "this is Maria", "it's Tom calling".
        if details.name.is_none() {
            let after = if low[i] == "name" && low.get(i + 1).is_some_and(|w| w == "is" || w == "'s") {
                Some(i + 2)
            } else if (low[i] == "this" && low.get(i + 1).is_some_and(|w| w == "is"))
                || (low[i] == "it's" && i + 2 < low.len() && low[i + 2] == "calling")
            {
                Some(if low[i] == "this" { i + 2 } else { i + 1 })
            } else {
                None
            };
            if let Some(at) = after
                && let Some(first) = raw.get(at).map(|w| clean(w))
                && first.chars().next().is_some_and(char::is_uppercase)
                && !["I", "Acme", "The"].contains(&first.as_str())
            {
                let mut name = first;
                if let Some(last) = raw.get(at + 1).map(|w| clean(w))
                    && last.chars().next().is_some_and(char::is_uppercase)
                    && !raw[at].ends_with([',', '.'])
                    && last != "I"
                {
                    name.push(' ');
                    name.push_str(&last);
                }
                details.name = Some(name);
            }
        }
        // Email: written.
        if details.email.is_none()
            && let Some((local, domain)) = low[i].split_once('@')
            && !local.is_empty()
            && domain.contains('.')
        {
            details.email = Some(low[i].clone());
        }
        // Email: spoken, "jsmith at gmail dot com".
        if details.email.is_none()
            && low[i] == "at"
            && i > 0
            && low.get(i + 2).is_some_and(|w| w == "dot")
            && let (Some(domain), Some(tld)) = (low.get(i + 1), low.get(i + 3))
            && ["com", "net", "org", "edu", "us", "io"].contains(&tld.as_str())
        {
            details.email = Some(format!("{}@{domain}.{tld}", low[i - 1]));
        }
        // ZIP: five digits after "zip".
        if details.zip.is_none() && low[i].starts_with("zip") {
            let digits: String = low[i + 1..low.len().min(i + 8)]
                .iter()
                .filter(|w| *w != "code" && *w != "is")
                .take_while(|w| w.chars().all(|c| c.is_ascii_digit()) || super::redact::digit_word(w).is_some())
                .map(|w| super::redact::digit_word(w).map_or_else(|| w.clone(), |d| d.to_string()))
                .collect();
            if digits.len() == 5 {
                details.zip = Some(digits);
            }
        }
        // Callback time: from the first time word after "call", "reach", "best time", "available".
        if details.callback_time.is_none()
            && ["call", "reach", "time", "available", "free"].contains(&low[i].as_str())
            && let Some(start) =
                (i + 1..low.len().min(i + 8)).find(|&k| TIME_WORDS.contains(&low[k].as_str()) || low[k] == "after")
        {
            let end = (start + 1..low.len().min(start + 4))
                .find(|&k| raw[k - 1].ends_with(['.', ',', '?', '!']))
                .unwrap_or(low.len().min(start + 3));
            let phrase: Vec<String> = raw[start..end].iter().map(|w| clean(w)).collect();
            details.callback_time = Some(phrase.join(" "));
        }
    }
    details
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(business: &str, caller: &str) -> Vec<Segment> {
        let seg = |speaker, text: &str| Segment { speaker, start: 0.0, end: 1.0, text: text.into(), confidence: None };
        vec![seg(Speaker::Business, business), seg(Speaker::Caller, caller)]
    }

    #[test]
    fn a_clear_kitchen_lead_scores_high() {
        let t = call(
            "Thanks for calling Acme Remodeling, this is Dana.",
            "Hi, this is Maria Lopez. We need a quote for a kitchen remodel, new cabinets and quartz countertops, \
             budget around $40,000. Can someone call me back tomorrow morning? My zip is 75024.",
        );
        let f = analyze(&t, CallFacts::default(), &ScoreWeights::default());
        assert_eq!((f.intent, f.project_type, f.budget), (Intent::NewLead, ProjectType::Kitchen, Budget::High));
        assert!(f.lead_score >= 70, "{f:?}");
        assert!(f.spam_likelihood < 20);
        assert_eq!(f.caller.name.as_deref(), Some("Maria Lopez"));
        assert_eq!(f.caller.zip.as_deref(), Some("75024"));
        assert_eq!(f.caller.callback_time.as_deref(), Some("tomorrow morning"));
    }

    #[test]
    fn a_finished_project_mentioned_in_passing_does_not_win() {
        let t = call(
            "Acme Remodeling.",
            "We did our kitchen last year with another company, now we want to redo the master bathroom, a walk in shower.",
        );
        assert_eq!(analyze(&t, CallFacts::default(), &ScoreWeights::default()).project_type, ProjectType::Bathroom);
    }

    #[test]
    fn robocalls_and_vendors_are_spam() {
        let robo = vec![Segment {
            speaker: Speaker::Caller,
            start: 0.0,
            end: 9.0,
            text: "This is a recorded message about your Google business listing. Press one to verify.".into(),
            confidence: None,
        }];
        let f = analyze(&robo, CallFacts::default(), &ScoreWeights::default());
        assert_eq!((f.intent, f.project_type), (Intent::SpamRobocall, ProjectType::None));
        assert!(f.spam_likelihood >= 90 && f.lead_score < 10);
        let vendor = call(
            "Acme Remodeling.",
            "Hi, I'm with a lead generation company, we sell exclusive kitchen remodel leads for contractors like you. \
             Who is the owner of the business?",
        );
        let f = analyze(&vendor, CallFacts::default(), &ScoreWeights::default());
        assert_eq!((f.intent, f.project_type), (Intent::VendorSolicitation, ProjectType::None));
    }

    #[test]
    fn amounts_in_words_and_figures() {
        assert_eq!(largest_amount("around thirty grand"), Some(30_000.0));
        assert_eq!(largest_amount("$15,000 to $20,000"), Some(20_000.0));
        assert_eq!(largest_amount("maybe twenty five thousand dollars"), Some(25_000.0));
        assert_eq!(largest_amount("it's twelve by fourteen"), None);
        assert_eq!(largest_amount("about 50k"), Some(50_000.0));
    }

    #[test]
    fn spoken_email_and_zip() {
        let t = call("Acme.", "Sure, it's jsmith at gmail dot com and the zip code is seven five zero two four.");
        let c = extract_contact(&t);
        assert_eq!(c.email.as_deref(), Some("jsmith@gmail.com"));
        assert_eq!(c.zip.as_deref(), Some("75024"));
    }
}
