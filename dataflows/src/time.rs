//! UTC timestamps as Unix seconds, parsed from and printed as RFC 3339 (`2021-11-27T00:00:03Z`).
//!
//! Killmail times are always UTC with second precision; a small exact parser avoids a date
//! library in the hot decode path.

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a day number (inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff][Z|+00:00]` into Unix seconds. Only UTC is accepted.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo as u32) as i64 {
        return None;
    }
    if h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    match rest {
        "" | "Z" | "z" | "+00:00" | "-00:00" => {}
        _ => return None,
    }
    Some(days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + se)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_rfc3339(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// The UTC day (days since 1970-01-01) of Unix time `t`.
#[inline]
pub fn day_of(t: i64) -> i32 {
    t.div_euclid(86_400) as i32
}

/// The calendar month `YYYYMM` of a UTC day.
#[inline]
pub fn month_of_day(day: i32) -> u32 {
    let (y, m, _) = civil_from_days(day as i64);
    (y.clamp(0, 9999) as u32) * 100 + m
}

/// Day of week (Monday 0) × 24 + hour of day (UTC) of Unix time `t`: a heatmap cell, 0..168.
#[inline]
pub fn week_hour(t: i64) -> u8 {
    // 1970-01-01 was a Thursday (3 with Monday 0).
    let dow = (day_of(t) as i64 + 3).rem_euclid(7);
    (dow * 24 + t.rem_euclid(86_400) / 3_600) as u8
}

/// `YYYY-MM-DD` of a UTC day.
pub fn format_day(day: i32) -> String {
    let (y, m, d) = civil_from_days(day as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_known_dates() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2021-11-27T00:00:03Z"), Some(1_637_971_203));
        assert_eq!(parse_rfc3339("2024-02-29T12:00:00Z"), Some(1_709_208_000));
        for t in [
            0,
            1_637_971_203,
            1_709_208_000,
            4_102_444_799,
            1_234_567_890,
        ] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t));
        }
        assert_eq!(
            parse_rfc3339("2021-11-27T00:00:03.250Z"),
            Some(1_637_971_203)
        );
        assert_eq!(
            parse_rfc3339("2021-11-27T00:00:03+00:00"),
            Some(1_637_971_203)
        );
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "2021-11-27",
            "2021-13-01T00:00:00Z",
            "2021-02-29T00:00:00Z",
            "2021-11-27T24:00:00Z",
            "2021-11-27T00:00:00+02:00",
            "2021-11-27T00:00:00.Z",
            "abcd-11-27T00:00:00Z",
            "2021-1a-27T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(s), None, "{s}");
        }
    }
}
