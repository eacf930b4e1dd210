//! Calendar dates as the datasets write them, and the day-of-year ratio the reference uses.

use std::fmt;

use crate::GeoError;

/// A validated Gregorian calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    year: i32,
    month: u8,
    day: u8,
}

const DAYS_IN_MONTH: [u8; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

impl Date {
    /// A date from its parts; an error for a month outside 1–12 or a day the month lacks.
    pub fn new(year: i32, month: u8, day: u8) -> Result<Self, GeoError> {
        let value = || format!("{year:04}-{month:02}-{day:02}");
        if !(1..=12).contains(&month) {
            return Err(GeoError::InvalidDate { value: value(), reason: "month is not in 1-12" });
        }
        if day == 0 || day > days_in_month(year, month) {
            return Err(GeoError::InvalidDate { value: value(), reason: "the month has no such day" });
        }
        Ok(Self { year, month, day })
    }

    /// Parses `YYYY-MM-DD`, optionally followed by a time and a zone after a space or a `T`
    /// (`2011-07-15`, `2011-07-15 00:00:00+00:00`, `2007-10-31T10:22:01`). Only the date counts,
    /// but what follows must be a time (`HH:MM[:SS[.fraction]]`) and an optional zone (`Z`, `UTC`,
    /// `GMT`, `±HH[:MM]`, `±HHMM`): anything else is junk that says the field is not what it seems.
    pub fn parse(text: &str) -> Result<Self, GeoError> {
        let invalid = |reason| GeoError::InvalidDate { value: text.to_owned(), reason };
        let trimmed = text.trim();
        let (date_part, rest) = match trimmed.find([' ', 'T']) {
            Some(idx) => trimmed.split_at(idx),
            None => (trimmed, ""),
        };
        if !rest.is_empty() && rest[1..].trim().is_empty() {
            return Err(invalid("nothing follows the date separator"));
        }
        if !rest.is_empty() && !is_time_and_zone(rest[1..].trim()) {
            return Err(invalid("what follows the date is not a time and zone"));
        }
        let mut fields = date_part.split('-');
        let (Some(year), Some(month), Some(day), None) = (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(invalid("expected YYYY-MM-DD"));
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if year.len() != 4
            || !all_digits(year)
            || month.len() != 2
            || !all_digits(month)
            || day.len() != 2
            || !all_digits(day)
        {
            return Err(invalid("expected YYYY-MM-DD"));
        }
        let year: i32 = year.parse().map_err(|_| invalid("year is not a number"))?;
        let month: u8 = month.parse().map_err(|_| invalid("month is not a number"))?;
        let day: u8 = day.parse().map_err(|_| invalid("day is not a number"))?;
        Self::new(year, month, day).map_err(|err| match err {
            GeoError::InvalidDate { reason, .. } => invalid(reason),
            other => other,
        })
    }

    pub fn year(&self) -> i32 {
        self.year
    }

    pub fn month(&self) -> u8 {
        self.month
    }

    pub fn day(&self) -> u8 {
        self.day
    }

    /// Day of the year, 1-based (1 January is 1).
    pub fn day_of_year(&self) -> u16 {
        let before: u16 = (1..self.month).map(|m| u16::from(days_in_month(self.year, m))).sum();
        before + u16::from(self.day)
    }

    /// The reference's `get_scaled_date_ratio`: `day_of_year / days_in_year · 2 − 1`, in (−1, 1].
    pub fn scaled_day_of_year(&self) -> f64 {
        let total = if is_leap_year(self.year) { 366.0 } else { 365.0 };
        f64::from(self.day_of_year()) / total * 2.0 - 1.0
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// Gregorian leap year, as the reference's `_is_leap_year`.
pub(crate) fn is_leap_year(year: i32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i32, month: u8) -> u8 {
    if month == 2 && is_leap_year(year) { 29 } else { DAYS_IN_MONTH[usize::from(month - 1)] }
}

/// `HH:MM[:SS[.fraction]]`, then optionally a zone: `Z`, `UTC`, `GMT`, `±HH`, `±HHMM`, `±HH:MM`
/// (a space before the zone allowed).
fn is_time_and_zone(text: &str) -> bool {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let zone_start = text.find(['Z', '+', '-', ' ', 'U', 'G']).unwrap_or(text.len());
    let (time, zone) = text.split_at(zone_start);
    let mut parts = time.split(':');
    let (Some(hours), Some(minutes)) = (parts.next(), parts.next()) else { return false };
    let hours_ok = (digits(hours, 1) || digits(hours, 2)) && hours.parse::<u8>().is_ok_and(|h| h < 24);
    let minutes_ok = digits(minutes, 2) && minutes.parse::<u8>().is_ok_and(|m| m < 60);
    let seconds_ok = match (parts.next(), parts.next()) {
        (None, _) => true,
        (Some(seconds), None) => {
            let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, "0"));
            digits(whole, 2)
                && whole.parse::<u8>().is_ok_and(|s| s <= 60)
                && fraction.bytes().all(|b| b.is_ascii_digit())
                && !fraction.is_empty()
        }
        _ => false,
    };
    let zone = zone.trim_start();
    let zone_ok = match zone {
        "" | "Z" | "UTC" | "GMT" => true,
        _ => {
            let offset = zone.strip_prefix(['+', '-']).unwrap_or("x");
            digits(offset, 2)
                || digits(offset, 4)
                || offset.split_once(':').is_some_and(|(h, m)| digits(h, 2) && digits(m, 2))
        }
    };
    hours_ok && minutes_ok && seconds_ok && zone_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_formats_inaturalist_writes() {
        let expected = Date::new(2011, 7, 15).unwrap();
        assert_eq!(Date::parse("2011-07-15").unwrap(), expected);
        assert_eq!(Date::parse("2011-07-15 00:00:00+00:00").unwrap(), expected);
        assert_eq!(Date::parse("2011-07-15T10:22:01").unwrap(), expected);
        for time in [
            "2011-07-15 10:52",
            "2011-07-15T10:22:01Z",
            "2011-07-15 10:22:01.250-05:00",
            "2011-07-15 9:05:00 UTC",
            "2011-07-15T10:22:01+0530",
        ] {
            assert_eq!(Date::parse(time).unwrap(), expected, "{time}");
        }
        assert_eq!(expected.to_string(), "2011-07-15");
    }

    #[test]
    fn rejects_impossible_dates_naming_the_value() {
        for bad in [
            "2011-13-01",
            "2011-02-30",
            "2011-00-10",
            "2011-04-31",
            "2001-02-29",
            "1900-02-29",
            "2011-7-15",
            "15/07/2011",
            "",
            "2011-07-15T",
            "2011-07-15X00",
            "2011-07-15 banana",
            "2011-07-15 25:00:00",
            "2011-07-15 10:61",
            "2011-07-15 10:52:00+5",
            "2011-07-15T10:22:01 Mars",
        ] {
            let err = Date::parse(bad).unwrap_err();
            let GeoError::InvalidDate { value, .. } = &err else { panic!("{bad}: {err}") };
            assert_eq!(value, bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
        assert!(Date::parse("2000-02-29").is_ok());
        assert!(Date::parse("2004-02-29").is_ok());
    }

    #[test]
    fn day_of_year_ratio_follows_the_reference() {
        // Spec §2: 1 January maps to 2/365 − 1, 31 December to exactly 1, leap years count 366 days.
        let jan1 = Date::new(2011, 1, 1).unwrap();
        assert!((jan1.scaled_day_of_year() - (2.0 / 365.0 - 1.0)).abs() < 1e-15);
        assert_eq!(Date::new(2000, 12, 31).unwrap().scaled_day_of_year(), 1.0);
        assert_eq!(Date::new(2001, 12, 31).unwrap().scaled_day_of_year(), 1.0);
        assert_eq!(Date::new(2008, 9, 20).unwrap().day_of_year(), 264);
        assert!((Date::new(1900, 3, 1).unwrap().scaled_day_of_year() - (-0.671_233)).abs() < 1e-6);
        assert!(is_leap_year(2000) && !is_leap_year(1900) && is_leap_year(2004) && !is_leap_year(2100));
    }
}
