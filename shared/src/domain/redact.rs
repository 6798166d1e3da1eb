//! Redaction of a transcript before anything leaves for the LLM or the analytics: payment card numbers, bank
//! account and routing numbers, SSN-like numbers, email addresses and street addresses, by tenant setting.
//!
//! Speech comes out of engines in many shapes — "4111 1111 1111 1111", "four one one one …", "double five",
//! "j smith at gmail dot com", "forty two Oak Ridge Drive" — and a number is often split across two segments
//! when the speaker pauses. So the whole transcript is read as one stream of tokens (each remembering its segment
//! and place), number words are read as digits, and what is found is replaced token by token in the segments it
//! came from. Pure: no I/O.

use serde::{Deserialize, Serialize};

use super::transcript::Segment;

/// What a tenant redacts. Everything by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedactionSettings {
    pub cards: bool,
    /// Bank account and routing numbers, SSN-like numbers.
    pub bank_and_ssn: bool,
    pub emails: bool,
    pub addresses: bool,
}

impl Default for RedactionSettings {
    fn default() -> Self {
        Self { cards: true, bank_and_ssn: true, emails: true, addresses: true }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Card,
    Ssn,
    BankAccount,
    Email,
    Address,
}

impl Kind {
    pub fn placeholder(self) -> &'static str {
        match self {
            Self::Card => "[card number]",
            Self::Ssn => "[ssn]",
            Self::BankAccount => "[bank number]",
            Self::Email => "[email]",
            Self::Address => "[street address]",
        }
    }
}

/// Redacted segments and how many of each kind were found.
#[derive(Debug, Clone, PartialEq)]
pub struct Redacted {
    pub segments: Vec<Segment>,
    pub found: Vec<(Kind, usize)>,
}

impl Redacted {
    pub fn total(&self) -> usize {
        self.found.iter().map(|(_, n)| n).sum()
    }
}

/// One whitespace-separated token of a segment.
#[derive(Debug, Clone)]
struct Token {
    segment: usize,
    /// Byte range in the segment's text.
    start: usize,
    end: usize,
    /// Lower case, without surrounding punctuation.
    core: String,
}

const DIGIT_WORDS: [(&str, u8); 12] = [
    ("zero", 0),
    ("oh", 0),
    ("o", 0),
    ("one", 1),
    ("two", 2),
    ("three", 3),
    ("four", 4),
    ("five", 5),
    ("six", 6),
    ("seven", 7),
    ("eight", 8),
    ("nine", 9),
];
/// The digit a spoken digit word stands for: "five" → 5, "oh" → 0.
pub fn digit_word(w: &str) -> Option<u8> {
    DIGIT_WORDS.iter().find(|(x, _)| *x == w).map(|(_, d)| *d)
}

const TEENS: [&str; 10] =
    ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"];
const TENS: [&str; 8] = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];

const STREET_SUFFIXES: &[&str] = &[
    "street",
    "st",
    "avenue",
    "ave",
    "road",
    "rd",
    "drive",
    "dr",
    "lane",
    "ln",
    "court",
    "ct",
    "boulevard",
    "blvd",
    "way",
    "place",
    "pl",
    "circle",
    "cir",
    "parkway",
    "pkwy",
    "terrace",
    "ter",
    "trail",
    "trl",
    "highway",
    "hwy",
    "loop",
    "run",
    "pike",
    "square",
    "crossing",
    "path",
];
/// Words that do not occur in a street name between the house number and the suffix.
const NOT_NAMES: &[&str] = &[
    "of", "the", "a", "an", "and", "to", "in", "on", "for", "by", "at", "feet", "foot", "ft", "square", "sq", "inch",
    "inches", "years", "year", "minutes", "days", "weeks", "months", "dollars", "grand", "k", "percent", "or", "is",
];
const MAIL_DOMAINS: &[&str] = &[
    "gmail", "yahoo", "hotmail", "outlook", "aol", "icloud", "comcast", "msn", "live", "me", "att", "verizon", "proton",
];
const TLDS: &[&str] = &["com", "net", "org", "edu", "us", "io", "co", "gov", "biz", "info"];

fn tokenize(segments: &[Segment]) -> Vec<Token> {
    let mut tokens = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        let text = &s.text;
        let mut pos = 0;
        for part in text.split_whitespace() {
            let start = pos + text[pos..].find(part).unwrap_or(0);
            let end = start + part.len();
            pos = end;
            let core = part
                .trim_matches(|c: char| !(c.is_alphanumeric() || c == '@' || c == '$'))
                .trim_end_matches('.')
                .to_lowercase();
            tokens.push(Token { segment: i, start, end, core });
        }
    }
    tokens
}

/// The digits a token stands for, if it is a number: `4111`, `123-45-6789`, `four`, `forty`, `fourteen`.
fn digits_of(core: &str) -> Option<String> {
    let stripped: String = core.chars().filter(|c| *c != '-' && *c != '.').collect();
    if !stripped.is_empty() && stripped.chars().all(|c| c.is_ascii_digit()) {
        return Some(stripped);
    }
    if let Some((_, d)) = DIGIT_WORDS.iter().find(|(w, _)| *w == core) {
        return Some(d.to_string());
    }
    if let Some(i) = TEENS.iter().position(|w| *w == core) {
        return Some((10 + i).to_string());
    }
    if let Some(i) = TENS.iter().position(|w| *w == core) {
        return Some(((i + 2) * 10).to_string());
    }
    // "forty-one", "twenty-two"
    if let Some((tens, unit)) = core.split_once('-')
        && let (Some(t), Some((_, u))) =
            (TENS.iter().position(|w| *w == tens), DIGIT_WORDS.iter().find(|(w, _)| *w == unit))
    {
        return Some(((t + 2) * 10 + usize::from(*u)).to_string());
    }
    None
}

/// A run of number tokens read as one digit string. "double five" is 55, "triple oh" 000; "forty one" is 41
/// (a tens word followed by a digit word merges).
fn read_number_run(tokens: &[Token], from: usize) -> Option<(usize, String)> {
    let mut digits = String::new();
    let mut i = from;
    let mut pending_tens: Option<u32> = None;
    while i < tokens.len() {
        let core = tokens[i].core.as_str();
        let repeat = match core {
            "double" => 2,
            "triple" => 3,
            _ => 1,
        };
        if repeat > 1 {
            match tokens.get(i + 1).and_then(|t| digits_of(&t.core)).filter(|d| d.len() == 1) {
                Some(d) => {
                    if let Some(t) = pending_tens.take() {
                        digits.push_str(&t.to_string());
                    }
                    digits.push_str(&d.repeat(repeat));
                    i += 2;
                    continue;
                }
                None => break,
            }
        }
        let Some(d) = digits_of(core) else { break };
        // A bare "o" or "oh" only counts inside a run of digits ("five oh two"), not as a word on its own.
        if matches!(core, "o" | "oh") && digits.is_empty() && pending_tens.is_none() {
            break;
        }
        let is_tens_word = TENS.contains(&core);
        match pending_tens.take() {
            Some(t) if d.len() == 1 && d != "0" => digits.push_str(&(t + d.parse::<u32>().unwrap_or(0)).to_string()),
            Some(t) => {
                digits.push_str(&t.to_string());
                if is_tens_word {
                    pending_tens = d.parse().ok();
                } else {
                    digits.push_str(&d);
                }
            }
            None if is_tens_word => pending_tens = d.parse().ok(),
            None => digits.push_str(&d),
        }
        i += 1;
    }
    if let Some(t) = pending_tens {
        digits.push_str(&t.to_string());
    }
    (i > from && !digits.is_empty()).then_some((i, digits))
}

fn luhn(digits: &str) -> bool {
    let mut sum = 0;
    for (i, c) in digits.chars().rev().enumerate() {
        let mut d = c.to_digit(10).unwrap_or(0);
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum % 10 == 0
}

/// Whether one of `words` occurs among the few tokens before `at`.
fn cue_before(tokens: &[Token], at: usize, words: &[&str]) -> bool {
    tokens[at.saturating_sub(8)..at].iter().any(|t| words.iter().any(|w| t.core.starts_with(w)))
}

fn classify_number(tokens: &[Token], start: usize, digits: &str, raw_dashed: bool) -> Option<Kind> {
    let n = digits.len();
    if (13..=19).contains(&n) && (luhn(digits) || cue_before(tokens, start, &["card", "visa", "mastercard", "amex"])) {
        return Some(Kind::Card);
    }
    if n == 9
        && (cue_before(tokens, start, &["social", "ssn", "security"])
            || (raw_dashed && tokens[start].core.split('-').map(str::len).collect::<Vec<_>>() == [3, 2, 4]))
    {
        return Some(Kind::Ssn);
    }
    if (6..=17).contains(&n) && cue_before(tokens, start, &["routing", "account", "acct", "aba", "checking", "savings"])
    {
        return Some(Kind::BankAccount);
    }
    None
}

/// Written (`jane@x.com`) and spoken (`jane smith at gmail dot com`) addresses: (first, last) token indexes.
fn find_email(tokens: &[Token], i: usize) -> Option<(usize, usize)> {
    let core = &tokens[i].core;
    if let Some((local, domain)) = core.split_once('@')
        && !local.is_empty()
        && domain.contains('.')
    {
        return Some((i, i));
    }
    if core != "at" || i == 0 {
        return None;
    }
    let domain = tokens.get(i + 1)?;
    // "at gmail dot com", "at bayside bath and kitchen dot com": one to four domain words, "dot", a top-level domain.
    let dotted = (1..=4).find(|k| {
        tokens.get(i + k + 1).is_some_and(|t| t.core == "dot")
            && tokens.get(i + k + 2).is_some_and(|t| TLDS.contains(&t.core.as_str()))
            && tokens[i + 1..=i + k].iter().all(|t| digits_of(&t.core).is_none())
    });
    let known = MAIL_DOMAINS.contains(&domain.core.as_str());
    if !(dotted.is_some() || known && tokens.get(i + 2).is_none_or(|t| t.core != "the")) {
        return None;
    }
    let last = dotted.map_or(i + 1, |k| i + k + 2);
    // The local part: up to four short tokens back, stopping at words that introduce it.
    const INTRO: &[&str] =
        &["is", "email", "e-mail", "it's", "its", "it", "address", "me", "my", "the", "send", "to", "at", "us"];
    let mut first = i;
    while first > 0 && i - first < 4 && !INTRO.contains(&tokens[first - 1].core.as_str()) {
        first -= 1;
    }
    (first < i).then_some((first, last))
}

/// A house number, up to four words of street name, and a street suffix: (first, last) token indexes.
fn find_address(tokens: &[Token], i: usize) -> Option<(usize, usize)> {
    let (after, digits) = read_number_run(tokens, i)?;
    if digits.len() > 6 || digits.is_empty() {
        return None;
    }
    for (k, t) in tokens.iter().enumerate().skip(after).take(5) {
        if k > after && STREET_SUFFIXES.contains(&t.core.as_str()) {
            return Some((i, k));
        }
        // Street names are words, not more numbers or measures ("30 feet of fence along the back way").
        if digits_of(&t.core).is_some() && !t.core.ends_with("th")
            || t.core.is_empty()
            || NOT_NAMES.contains(&t.core.as_str())
        {
            return None;
        }
    }
    None
}

/// After a card number: its expiry date and security code, when a cue announces them ("expires oh nine twenty
/// seven", "the code is one two three"), within the next few sentences.
fn card_details(tokens: &[Token], from: usize, marks: &mut [Option<Kind>]) {
    const CUES: &[&str] = &["expir", "exp", "code", "cvv", "cvc", "security", "back"];
    let mut i = from;
    while i < tokens.len().min(from + 30) {
        if CUES.iter().any(|c| tokens[i].core.starts_with(c)) {
            // The number may start with "oh" ("oh nine twenty seven"), which alone is not read as a digit.
            let mut start = i + 1;
            while start < tokens.len().min(i + 5) && read_number_run(tokens, start).is_none() {
                if matches!(tokens[start].core.as_str(), "oh" | "o") {
                    break;
                }
                start += 1;
            }
            let run = if matches!(tokens.get(start).map(|t| t.core.as_str()), Some("oh" | "o")) {
                read_number_run(tokens, start + 1).map(|(end, d)| (end, format!("0{d}")))
            } else {
                read_number_run(tokens, start)
            };
            if let Some((end, digits)) = run
                && (3..=4).contains(&digits.len())
            {
                marks[start..end].fill(Some(Kind::Card));
                i = end;
                continue;
            }
        }
        i += 1;
    }
}

/// Redact `segments` per `settings`.
pub fn redact(segments: &[Segment], settings: &RedactionSettings) -> Redacted {
    let tokens = tokenize(segments);
    let mut marks: Vec<Option<Kind>> = vec![None; tokens.len()];
    let mut i = 0;
    while i < tokens.len() {
        if settings.emails
            && let Some((a, b)) = find_email(&tokens, i)
        {
            marks[a..=b].fill(Some(Kind::Email));
            i = b + 1;
            continue;
        }
        if settings.addresses
            && let Some((a, b)) = find_address(&tokens, i)
        {
            marks[a..=b].fill(Some(Kind::Address));
            i = b + 1;
            continue;
        }
        if let Some((end, digits)) = read_number_run(&tokens, i) {
            let dashed = tokens[i].core.contains('-') && end == i + 1;
            match classify_number(&tokens, i, &digits, dashed) {
                Some(Kind::Card) if settings.cards => {
                    marks[i..end].fill(Some(Kind::Card));
                    card_details(&tokens, end, &mut marks);
                }
                Some(k @ (Kind::Ssn | Kind::BankAccount)) if settings.bank_and_ssn => marks[i..end].fill(Some(k)),
                _ => {}
            }
            i = end;
            continue;
        }
        i += 1;
    }
    rebuild(segments, &tokens, &marks)
}

/// Replace each run of marked tokens (within one segment) by its placeholder; count runs across segments once.
fn rebuild(segments: &[Segment], tokens: &[Token], marks: &[Option<Kind>]) -> Redacted {
    let mut out: Vec<Segment> = segments.to_vec();
    let mut found: std::collections::BTreeMap<Kind, usize> = std::collections::BTreeMap::new();
    let mut previous: Option<Kind> = None;
    for kind in marks {
        if let Some(kind) = kind
            && previous != Some(*kind)
        {
            *found.entry(*kind).or_default() += 1;
        }
        previous = *kind;
    }
    for (s, segment) in out.iter_mut().enumerate() {
        let text = &segments[s].text;
        let mut result = String::with_capacity(text.len());
        let mut cursor = 0;
        let mut run: Option<(Kind, usize, usize)> = None;
        let flush = |result: &mut String, run: &mut Option<(Kind, usize, usize)>, text: &str, cursor: &mut usize| {
            if let Some((kind, start, end)) = run.take() {
                result.push_str(&text[*cursor..start]);
                result.push_str(kind.placeholder());
                // Keep trailing punctuation of the last token ("…1111." stays a sentence end).
                let tail: String = text[start..end].chars().rev().take_while(|c| ".,;:!?".contains(*c)).collect();
                result.extend(tail.chars().rev());
                *cursor = end;
            }
        };
        for (t, token) in tokens.iter().enumerate().filter(|(_, t)| t.segment == s) {
            match (marks[t], &mut run) {
                (Some(kind), Some((k, _, end))) if *k == kind => *end = token.end,
                (Some(kind), _) => {
                    flush(&mut result, &mut run, text, &mut cursor);
                    run = Some((kind, token.start, token.end));
                }
                (None, _) => flush(&mut result, &mut run, text, &mut cursor),
            }
        }
        flush(&mut result, &mut run, text, &mut cursor);
        result.push_str(&text[cursor..]);
        segment.text = result;
    }
    Redacted { segments: out, found: found.into_iter().collect() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::transcript::Speaker;

    fn seg(text: &str) -> Segment {
        Segment { speaker: Speaker::Caller, start: 0.0, end: 1.0, text: text.into(), confidence: None }
    }

    fn one(text: &str) -> (String, Vec<(Kind, usize)>) {
        let r = redact(&[seg(text)], &RedactionSettings::default());
        (r.segments[0].text.clone(), r.found)
    }

    #[test]
    fn card_numbers_written_and_spoken() {
        let (t, f) = one("Sure, it's 4111 1111 1111 1111, expires oh nine twenty seven, code is seven three seven.");
        assert_eq!(t, "Sure, it's [card number], expires [card number], code is [card number].");
        assert_eq!(f, [(Kind::Card, 3)]);
        let (t, _) = one("my card is four one one one one one one one one one one one one one one one thanks");
        assert_eq!(t, "my card is [card number] thanks");
        let (t, _) = one("the visa is 4111-1111-1111-1111.");
        assert_eq!(t, "the visa is [card number].");
        let (t, _) = one("forty one eleven, double one one one, one one one one, one one one one");
        assert!(t.starts_with("[card number]"), "{t}");
    }

    #[test]
    fn a_number_split_across_segments_is_found_and_replaced_in_both() {
        let segments = [seg("OK the card number is 4111 1111"), seg("1111 1111. Got it?")];
        let r = redact(&segments, &RedactionSettings::default());
        assert_eq!(r.segments[0].text, "OK the card number is [card number]");
        assert_eq!(r.segments[1].text, "[card number]. Got it?");
        assert_eq!(r.found, [(Kind::Card, 1)]);
    }

    #[test]
    fn ssn_and_bank_numbers_need_their_cue_or_shape() {
        assert_eq!(one("my social is 123-45-6789 ok").0, "my social is [ssn] ok");
        assert_eq!(one("it's 123-45-6789").0, "it's [ssn]");
        assert_eq!(
            one("social security number one two three four five six seven eight nine").0,
            "social security number [ssn]"
        );
        assert_eq!(
            one("routing number 021000021 and account 12345678901").0,
            "routing number [bank number] and account [bank number]"
        );
        // A phone number or a price is left alone: the CRM needs the first, the analysis the second.
        assert_eq!(
            one("call me at 214 555 0101 about the $15,000 budget").0,
            "call me at 214 555 0101 about the $15,000 budget"
        );
        assert_eq!(one("it's about twelve by fourteen").0, "it's about twelve by fourteen");
    }

    #[test]
    fn emails_written_and_spoken() {
        assert_eq!(one("email me at jane.doe@example.com please").0, "email me at [email] please");
        assert_eq!(one("it's j smith at gmail dot com").0, "it's [email]");
        assert_eq!(one("my email is maria at yahoo").0, "my email is [email]");
        assert_eq!(one("we're at home most days").0, "we're at home most days");
    }

    #[test]
    fn street_addresses() {
        assert_eq!(one("we live at 1423 Maple Street in Plano").0, "we live at [street address] in Plano");
        assert_eq!(one("it's forty two Oak Ridge Drive.").0, "it's [street address].");
        assert_eq!(one("about 30 feet of fence").0, "about 30 feet of fence");
    }

    #[test]
    fn tenant_settings_turn_kinds_off() {
        let settings = RedactionSettings { emails: false, addresses: false, ..RedactionSettings::default() };
        let r = redact(&[seg("jane@example.com at 12 Elm St, card 4111111111111111")], &settings);
        assert_eq!(r.segments[0].text, "jane@example.com at 12 Elm St, card [card number]");
        assert_eq!(one("about 30 feet of fence along the back way").0, "about 30 feet of fence along the back way");
    }
}
