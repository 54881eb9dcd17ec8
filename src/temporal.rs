//! Dates and timestamps that chrono and Arrow's display cannot show: PostgreSQL's `infinity` and
//! `-infinity`, and years past 9999 (PostgreSQL dates reach year 5874897). Snapshots keep them
//! exactly: ±infinity as the extreme values of the Arrow column (`i32::MAX`/`i32::MIN` days,
//! `i64::MAX`/`i64::MIN` microseconds), far years as ordinary day or microsecond counts. This
//! module turns them into text; writeback sends that text where the destination can hold it
//! (PostgreSQL) and fails the row elsewhere, never a NULL.

/// Days since 1970-01-01 that stand for `infinity` / `-infinity` in a Date32 column.
pub const DATE_INFINITY: i32 = i32::MAX;
pub const DATE_NEG_INFINITY: i32 = i32::MIN;
/// Microseconds since the epoch that stand for `infinity` / `-infinity` in a timestamp column.
pub const TIMESTAMP_INFINITY: i64 = i64::MAX;
pub const TIMESTAMP_NEG_INFINITY: i64 = i64::MIN;

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01, for any day an
/// `i32` holds (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
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

/// `2024-03-01`, `270000-01-01`, `infinity`, `-infinity`; years before 1 as `-0044` (ISO 8601).
pub fn date_text(days: i32) -> String {
    match days {
        DATE_INFINITY => "infinity".into(),
        DATE_NEG_INFINITY => "-infinity".into(),
        _ => ymd(i64::from(days)),
    }
}

fn ymd(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    if y < 0 {
        format!("-{:04}-{m:02}-{d:02}", -y)
    } else {
        format!("{y:04}-{m:02}-{d:02}")
    }
}

/// `2024-03-01T10:00:00.123456` (with `Z` when `zoned`), `infinity`, `-infinity`.
pub fn timestamp_text(micros: i64, zoned: bool) -> String {
    match micros {
        TIMESTAMP_INFINITY => return "infinity".into(),
        TIMESTAMP_NEG_INFINITY => return "-infinity".into(),
        _ => {}
    }
    let days = micros.div_euclid(86_400_000_000);
    let of_day = micros.rem_euclid(86_400_000_000);
    let (secs, fraction) = (of_day / 1_000_000, of_day % 1_000_000);
    let mut text = format!(
        "{}T{:02}:{:02}:{:02}",
        ymd(days),
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if fraction != 0 {
        text.push_str(&format!(".{fraction:06}"));
    }
    if zoned {
        text.push('Z');
    }
    text
}

/// Whether chrono (and so Arrow's display and the database drivers) can hold this date.
pub fn date_in_chrono_range(days: i32) -> bool {
    chrono::NaiveDate::from_num_days_from_ce_opt(days.saturating_add(719_163)).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_dates_and_infinities_have_text() {
        assert_eq!(date_text(0), "1970-01-01");
        assert_eq!(date_text(19_783), "2024-03-01");
        assert_eq!(date_text(DATE_INFINITY), "infinity");
        assert_eq!(date_text(DATE_NEG_INFINITY), "-infinity");
        // 270000-01-01: PostgreSQL accepts it; chrono cannot hold it.
        let far = 97_895_947;
        assert_eq!(date_text(far), "270000-01-01");
        assert!(!date_in_chrono_range(far));
        assert_eq!(
            timestamp_text(1_000_001, true),
            "1970-01-01T00:00:01.000001Z"
        );
        assert_eq!(timestamp_text(-1, false), "1969-12-31T23:59:59.999999");
        assert_eq!(timestamp_text(TIMESTAMP_NEG_INFINITY, true), "-infinity");
    }
}
