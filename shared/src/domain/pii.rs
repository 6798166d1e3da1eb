//! Masking for logs: phone numbers and email addresses never reach a log line in the clear.

/// `+12148654559` → `+1*******559`: enough to tell calls apart in an incident, not enough to call anyone.
pub fn mask_phone(phone: &str) -> String {
    let digits: Vec<char> = phone.chars().filter(char::is_ascii_digit).collect();
    if digits.len() <= 4 {
        return "*".repeat(digits.len());
    }
    let keep_tail = 3;
    let keep_head = usize::from(phone.trim_start().starts_with('+') && digits.len() > 10);
    let mut out = String::with_capacity(digits.len() + 1);
    if keep_head == 1 {
        out.push('+');
        out.push(digits[0]);
    }
    out.extend(std::iter::repeat_n('*', digits.len() - keep_head - keep_tail));
    out.extend(&digits[digits.len() - keep_tail..]);
    out
}

/// `kaylah.mills@example.com` → `k***@e***.com`.
pub fn mask_email(email: &str) -> String {
    let Some((local, domain)) = email.split_once('@') else {
        return "***".into();
    };
    let first = |s: &str| s.chars().next().map(String::from).unwrap_or_default();
    let tld = domain.rsplit_once('.').map(|(_, t)| t).unwrap_or("");
    format!("{}***@{}***.{}", first(local), first(domain), tld)
}

fn is_sep(c: char) -> bool {
    matches!(c, ' ' | '-' | '.' | '(' | ')')
}

/// Mask anything in free text that looks like a phone number (10–15 digits with the usual separators, not a
/// date) or an email address. The logging layer runs every string through this as a safety net, so a serde
/// error that quotes a payload value cannot leak a caller's number.
pub fn scrub(text: &str) -> std::borrow::Cow<'_, str> {
    let needs = text.contains('@')
        || text.as_bytes().windows(10).any(|w| w.iter().all(u8::is_ascii_digit))
        || text.chars().filter(char::is_ascii_digit).count() >= 10;
    if !needs {
        return std::borrow::Cow::Borrowed(text);
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        // Email: a run of non-space chars containing '@' with a dot after it.
        if c == '@' {
            let start = out.rfind(|ch: char| ch.is_whitespace() || "\"'<(,;:=".contains(ch)).map_or(0, |p| p + 1);
            let local: String = out[start..].to_owned();
            let mut j = i + 1;
            while j < chars.len() && (chars[j].is_ascii_alphanumeric() || matches!(chars[j], '.' | '-' | '_')) {
                j += 1;
            }
            let domain: String = chars[i + 1..j].iter().collect();
            if !local.is_empty() && domain.contains('.') {
                out.truncate(start);
                out.push_str(&mask_email(&format!("{local}@{domain}")));
                i = j;
                continue;
            }
        }
        let starts_number =
            c.is_ascii_digit() || (matches!(c, '+' | '(') && chars.get(i + 1).is_some_and(char::is_ascii_digit));
        let prev_alnum = i > 0 && chars[i - 1].is_ascii_alphanumeric();
        if starts_number && !prev_alnum {
            let mut j = i + usize::from(!c.is_ascii_digit());
            let (mut digits, mut end, mut seps_in_row) = (0, j, 0);
            while j < chars.len() && (chars[j].is_ascii_digit() || is_sep(chars[j])) {
                if chars[j].is_ascii_digit() {
                    digits += 1;
                    end = j + 1;
                    seps_in_row = 0;
                } else {
                    // "(214) 865": at most two separators in a row belong to a number.
                    seps_in_row += 1;
                    if seps_in_row > 2 {
                        break;
                    }
                }
                j += 1;
            }
            let run: String = chars[i..end].iter().collect();
            let date_like =
                run.len() >= 10 && run.as_bytes()[4] == b'-' && run[..4].bytes().all(|b| b.is_ascii_digit());
            let next_alnum = chars.get(end).is_some_and(char::is_ascii_alphanumeric);
            if (10..=15).contains(&digits) && !date_like && !next_alnum {
                out.push_str(&mask_phone(&run));
                i = end;
                continue;
            }
            out.push_str(&run);
            i = end.max(i + 1);
            continue;
        }
        out.push(c);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_phones_and_emails() {
        assert_eq!(mask_phone("+12148654559"), "+1*******559");
        assert_eq!(mask_phone("214-865-4559"), "*******559");
        assert_eq!(mask_email("kaylah.mills@example.com"), "k***@e***.com");
    }

    #[test]
    fn scrub_finds_pii_in_free_text() {
        let s = scrub(r#"invalid type: string "+12148654559", caller (214) 865-4559 or kay@example.com"#);
        assert!(!s.contains("865"), "{s}");
        assert!(!s.contains("kay@example.com"), "{s}");
        assert!(s.contains("+1*******559"), "{s}");
    }

    #[test]
    fn scrub_leaves_ids_dates_and_plain_text() {
        for t in [
            "call 766970532 accepted",
            "at 2018-02-19 18:41:00",
            "CAL8154748ae6bd4e278a7cddd38a662f4f",
            "took 1234567 ns",
            "listening on 127.0.0.1:8080",
        ] {
            assert_eq!(scrub(t), t);
        }
    }
}
