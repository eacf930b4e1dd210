//! Where and when a photo was taken, and how Dynamic MLP encodes it.
//!
//! This crate parses latitudes, longitudes and dates as the datasets write them, validates them,
//! and turns them into the location vector the reference implementation feeds its location
//! encoder (`dataset.py` of the official repository, spec §2):
//!
//! - latitude / 90, longitude / 180, and the day of the year scaled to (−1, 1] with Gregorian
//!   leap years (`doy / days_in_year · 2 − 1`; only the date part of a timestamp counts);
//! - in the order latitude, longitude, date, for the fields the [`Metadata`] mode uses;
//! - encoded as `[sin(π·v)…, cos(π·v)…]` (the sine block first, then the cosine block).
//!
//! A missing field that the mode uses gives the all-zero vector. The reference zeroes the vector
//! when *any* of the three fields is missing, whatever the mode; that would erase every YFCC
//! location (YFCC has no dates), so we apply its rule only to the fields the mode uses.
//!
//! Impossible input (month 13, 30 February, latitude 95, NaN) is an error naming the value.
//!
//! Architecture invariant: no tensor library and no I/O; this crate builds and tests in seconds.

mod date;
mod encoding;

pub use date::Date;
pub use encoding::{Metadata, Observation};

/// What can be wrong with a location or a date.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GeoError {
    #[error("invalid date {value:?}: {reason}")]
    InvalidDate { value: String, reason: &'static str },
    #[error("latitude {0} is not a finite number in [-90, 90]")]
    Latitude(f64),
    #[error("longitude {0} is not a finite number in [-180, 180]")]
    Longitude(f64),
    #[error("date_c {0} is not a finite fraction of the year in [0, 1]")]
    YearFraction(f64),
    #[error("unknown metadata mode {0:?}: expected geo_temporal, geo or temporal")]
    UnknownMetadata(String),
}
