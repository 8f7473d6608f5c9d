//! Durations on the command line: `1s`, `250ms`, `2m`, or a bare number of
//! seconds (`6`, `0.5`), as `timeout`, `sleep` and `top -d` take them.

use std::time::Duration;

/// Parses a positive duration such as `1s`, `250ms`, `2m` or `6` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let d = if t.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && t.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        let secs: f64 = t
            .parse()
            .map_err(|_| format!("{text:?} is not a number of seconds like 6 or 0.5"))?;
        Duration::try_from_secs_f64(secs).map_err(|e| format!("{text:?}: {e}"))?
    } else {
        humantime::parse_duration(t).map_err(|e| {
            format!("{text:?} is not a duration like 6 (seconds), 1s or 500ms ({e})")
        })?
    };
    if d.is_zero() {
        return Err(format!("{text:?}: the duration must be greater than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_numbers_are_seconds() {
        assert_eq!(parse_duration("6"), Ok(Duration::from_secs(6)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(" 2 "), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn units_still_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn bad_durations_explain() {
        for zero in ["0", "0.0", "0s"] {
            assert!(
                parse_duration(zero)
                    .unwrap_err()
                    .contains("greater than zero"),
                "{zero}"
            );
        }
        assert!(
            parse_duration("1.2.3")
                .unwrap_err()
                .contains("number of seconds")
        );
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(parse_duration("-1").unwrap_err().contains("not a duration"));
        assert!(parse_duration("").unwrap_err().contains("not a duration"));
    }
}
