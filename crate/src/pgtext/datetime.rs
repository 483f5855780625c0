//! Dates, times, time stamps and intervals as the server prints them (DateStyle ISO,
//! IntervalStyle postgres).

use std::fmt::Write as _;

use super::{i32_at, i64_at, Res};

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); year 0 is 1 BC.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

/// `YYYY-MM-DD`, and whether the year is BC.
fn push_ymd(days_since_2000: i64, s: &mut String) -> bool {
    let (year, month, day) = civil_from_days(days_since_2000 + PG_EPOCH_DAYS);
    let (year, bc) = if year <= 0 { (1 - year, true) } else { (year, false) };
    let _ = write!(s, "{year:04}-{month:02}-{day:02}");
    bc
}

pub(super) fn date_text(days: i32, s: &mut String) {
    match days {
        i32::MAX => s.push_str("infinity"),
        i32::MIN => s.push_str("-infinity"),
        _ => {
            if push_ymd(days.into(), s) {
                s.push_str(" BC");
            }
        }
    }
}

/// `HH:MM:SS[.ffffff]` with trailing zeros of the fraction dropped.
fn push_hms(hours: i64, minutes: i64, seconds: i64, micros: i64, s: &mut String) {
    let _ = write!(s, "{hours:02}:{minutes:02}:{seconds:02}");
    if micros != 0 {
        let frac = format!("{micros:06}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
}

pub(super) fn time_text(micros: i64, s: &mut String) {
    let secs = micros / 1_000_000;
    push_hms(secs / 3600, (secs / 60) % 60, secs % 60, micros % 1_000_000, s);
}

/// `+HH`, `+HH:MM` or `+HH:MM:SS` for a zone given in seconds west of Greenwich.
fn push_zone(west: i32, s: &mut String) {
    let abs = west.unsigned_abs();
    let (hours, minutes, seconds) = (abs / 3600, (abs / 60) % 60, abs % 60);
    s.push(if west <= 0 { '+' } else { '-' });
    let _ = write!(s, "{hours:02}");
    if seconds != 0 {
        let _ = write!(s, ":{minutes:02}:{seconds:02}");
    } else if minutes != 0 {
        let _ = write!(s, ":{minutes:02}");
    }
}

pub(super) fn timetz_text(raw: &[u8], s: &mut String) -> Res {
    time_text(i64_at(raw, 0, "timetz")?, s);
    push_zone(i32_at(raw, 8, "timetz")?, s);
    Ok(())
}

pub(super) fn timestamp_text(micros: i64, utc: bool, s: &mut String) {
    match micros {
        i64::MAX => s.push_str("infinity"),
        i64::MIN => s.push_str("-infinity"),
        _ => {
            let bc = push_ymd(micros.div_euclid(86_400_000_000), s);
            let time = micros.rem_euclid(86_400_000_000);
            let secs = time / 1_000_000;
            s.push(' ');
            push_hms(secs / 3600, (secs / 60) % 60, secs % 60, time % 1_000_000, s);
            if utc {
                s.push_str("+00");
            }
            if bc {
                s.push_str(" BC");
            }
        }
    }
}

/// IntervalStyle `postgres`: `1 year 2 mons -3 days +04:05:06.5`.
pub(super) fn interval_text(raw: &[u8], s: &mut String) -> Res {
    let time = i64_at(raw, 0, "interval")?;
    let days = i32_at(raw, 8, "interval")?;
    let months = i32_at(raw, 12, "interval")?;
    if months == i32::MAX && days == i32::MAX && time == i64::MAX {
        s.push_str("infinity");
        return Ok(());
    }
    if months == i32::MIN && days == i32::MIN && time == i64::MIN {
        s.push_str("-infinity");
        return Ok(());
    }
    let mut is_zero = true;
    let mut is_before = false;
    let mut part = |value: i64, unit: &str, s: &mut String| {
        if value == 0 {
            return;
        }
        let _ = write!(
            s,
            "{}{}{value} {unit}{}",
            if is_zero { "" } else { " " },
            if is_before && value > 0 { "+" } else { "" },
            if value != 1 { "s" } else { "" }
        );
        is_before = value < 0;
        is_zero = false;
    };
    part(i64::from(months / 12), "year", s);
    part(i64::from(months % 12), "mon", s);
    part(i64::from(days), "day", s);
    let hours = time / 3_600_000_000;
    let minutes = (time / 60_000_000) % 60;
    let seconds = (time / 1_000_000) % 60;
    let micros = time % 1_000_000;
    if is_zero || time != 0 {
        let minus = time < 0;
        let _ = write!(
            s,
            "{}{}",
            if is_zero { "" } else { " " },
            if minus {
                "-"
            } else if is_before {
                "+"
            } else {
                ""
            }
        );
        push_hms(hours.abs(), minutes.abs(), seconds.abs(), micros.abs(), s);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-719_528), (0, 1, 1));
        let mut s = String::new();
        date_text(-730_485, &mut s);
        assert_eq!(s, "0001-01-01 BC");
    }
}
