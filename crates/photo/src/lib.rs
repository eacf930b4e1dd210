//! What a photo says about itself: where and when it was taken, and which way up it is, read
//! from its EXIF block (JPEG's APP1, and the EXIF of TIFF, PNG, WebP and HEIF files) with
//! kamadak-exif.
//!
//! - Position: `GPSLatitude`/`GPSLongitude` (degrees, minutes, seconds as rationals; cameras also
//!   write decimal degrees or decimal minutes in the first one or two) signed by
//!   `GPSLatitudeRef` (`N`/`S`) and `GPSLongitudeRef` (`E`/`W`). A position the receiver marked
//!   void (`GPSStatus = V`), one with a zero denominator, or one outside ±90° / ±180° is not
//!   used, and a note says why.
//! - Date: `DateTimeOriginal` (when the shutter fired), else `DateTime` (when the file was last
//!   written, what phones and editors leave); the blank and all-zero dates cameras write
//!   without a clock are missing, not errors. Only the calendar date is kept (the encoding uses
//!   the day of the year).
//! - Orientation: `Orientation` (1–8), for the pixels to be turned as a phone's gallery shows
//!   them (`dmlp-vision`'s `orient`).
//!
//! A photo without EXIF, or with a block that cannot be parsed, has no metadata and a note: a
//! damaged EXIF block never stops a prediction (its fields that could be read are used).
//!
//! Architecture invariant: knows EXIF fields only: no pixels, no models, no dataset formats, no
//! files (callers pass the bytes).

use std::io::Cursor;

use dmlp_geo::Date;
use exif::{Exif, Field, In, Tag, Value};

/// Where, when and which way up a photo was taken, as far as its EXIF says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PhotoMetadata {
    /// Degrees north (negative: south).
    pub latitude: Option<f64>,
    /// Degrees east (negative: west).
    pub longitude: Option<f64>,
    pub date: Option<Date>,
    /// Which EXIF field gave the date (`DateTimeOriginal` or `DateTime`).
    pub date_field: Option<&'static str>,
    /// EXIF orientation, 1 (as stored) to 8; 1 when absent or invalid.
    pub orientation: u8,
    /// Why something present was not used, and what was assumed: one line each.
    pub notes: Vec<String>,
}

impl PhotoMetadata {
    /// Whether the EXIF gave both coordinates.
    pub fn has_position(&self) -> bool {
        self.latitude.is_some() && self.longitude.is_some()
    }
}

/// Reads the metadata of the image file `bytes` (any container kamadak-exif reads). Never fails:
/// no EXIF, or EXIF that cannot be parsed, gives no metadata and a note saying why.
pub fn read_metadata(bytes: &[u8]) -> PhotoMetadata {
    let mut reader = exif::Reader::new();
    reader.continue_on_error(true);
    let mut notes = Vec::new();
    let exif = match reader.read_from_container(&mut Cursor::new(bytes)) {
        Ok(exif) => exif,
        Err(exif::Error::NotFound(_)) => return PhotoMetadata { orientation: 1, ..PhotoMetadata::default() },
        Err(err) => match err.distill_partial_result(|errors| {
            notes.extend(errors.iter().map(|e| format!("EXIF partly unreadable: {e}")));
        }) {
            Ok(exif) => exif,
            Err(err) => {
                return PhotoMetadata {
                    orientation: 1,
                    notes: vec![format!("EXIF unreadable: {err}")],
                    ..PhotoMetadata::default()
                };
            }
        },
    };
    let mut metadata = from_exif(&exif);
    notes.append(&mut metadata.notes);
    metadata.notes = notes;
    metadata
}

/// The metadata in parsed EXIF fields.
pub fn from_exif(exif: &Exif) -> PhotoMetadata {
    let mut notes = Vec::new();
    let (latitude, longitude) = position(exif, &mut notes);
    let (date, date_field) = date_taken(exif, &mut notes);
    let orientation = match exif.get_field(Tag::Orientation, In::PRIMARY).and_then(|f| f.value.get_uint(0)) {
        None => 1,
        Some(o @ 1..=8) => o as u8,
        Some(o) => {
            notes.push(format!("Orientation {o} is not 1-8; the pixels are used as stored"));
            1
        }
    };
    PhotoMetadata { latitude, longitude, date, date_field, orientation, notes }
}

fn field(exif: &Exif, tag: Tag) -> Option<&Field> {
    exif.get_field(tag, In::PRIMARY)
}

/// The first string of an ASCII field, trimmed of spaces and NULs.
fn ascii(field: &Field) -> Option<String> {
    match &field.value {
        Value::Ascii(strings) => {
            let s = String::from_utf8_lossy(strings.first()?);
            Some(s.trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_owned())
        }
        _ => None,
    }
}

/// Degrees from a GPS coordinate field: one to three rationals (degrees, minutes, seconds).
fn degrees(field: &Field) -> Result<f64, String> {
    let parts: Vec<(f64, u32)> = match &field.value {
        Value::Rational(v) => v.iter().map(|r| (f64::from(r.num), r.denom)).collect(),
        // Not the standard's type, but written by some software; signs come from the reference.
        Value::SRational(v) => v.iter().map(|r| (f64::from(r.num).abs(), r.denom.unsigned_abs())).collect(),
        other => return Err(format!("{other:?} is not rationals")),
    };
    if parts.is_empty() || parts.len() > 3 {
        return Err(format!("{} values, not 1-3", parts.len()));
    }
    let mut total = 0.0;
    for ((num, denom), unit) in parts.into_iter().zip([1.0, 60.0, 3600.0]) {
        if denom == 0 {
            // 0/0 is how several phones write "no fix".
            return Err("a zero denominator".into());
        }
        total += num / f64::from(denom) / unit;
    }
    Ok(total)
}

/// One signed coordinate: `value_tag` signed by `ref_tag` (`negative` is `S` or `W`).
fn coordinate(
    exif: &Exif,
    (value_tag, ref_tag): (Tag, Tag),
    (positive, negative): (char, char),
    limit: f64,
    notes: &mut Vec<String>,
) -> Option<f64> {
    let value = field(exif, value_tag)?;
    let magnitude = match degrees(value) {
        Ok(d) => d,
        Err(why) => {
            notes.push(format!("{value_tag} not used: {why}"));
            return None;
        }
    };
    let reference = field(exif, ref_tag).and_then(ascii).and_then(|s| s.chars().next());
    let sign = match reference.map(|c| c.to_ascii_uppercase()) {
        Some(c) if c == positive => 1.0,
        Some(c) if c == negative => -1.0,
        Some(c) => {
            notes.push(format!("{value_tag} not used: {ref_tag} is {c:?}, not {positive} or {negative}"));
            return None;
        }
        None => {
            notes.push(format!("{ref_tag} missing; {value_tag} taken as {positive}"));
            1.0
        }
    };
    let signed = sign * magnitude;
    if !signed.is_finite() || signed.abs() > limit {
        notes.push(format!("{value_tag} not used: {signed} is outside ±{limit}°"));
        return None;
    }
    Some(signed)
}

fn position(exif: &Exif, notes: &mut Vec<String>) -> (Option<f64>, Option<f64>) {
    if field(exif, Tag::GPSLatitude).is_none() && field(exif, Tag::GPSLongitude).is_none() {
        return (None, None);
    }
    if field(exif, Tag::GPSStatus).and_then(ascii).is_some_and(|s| s.eq_ignore_ascii_case("V")) {
        notes.push("GPS position not used: the receiver marked it void (GPSStatus V)".into());
        return (None, None);
    }
    let latitude = coordinate(exif, (Tag::GPSLatitude, Tag::GPSLatitudeRef), ('N', 'S'), 90.0, notes);
    let longitude = coordinate(exif, (Tag::GPSLongitude, Tag::GPSLongitudeRef), ('E', 'W'), 180.0, notes);
    match (latitude, longitude) {
        (Some(lat), Some(lon)) => (Some(lat), Some(lon)),
        (Some(_), None) | (None, Some(_)) => {
            notes.push("GPS position not used: only one coordinate is usable".into());
            (None, None)
        }
        (None, None) => (None, None),
    }
}

/// The calendar date of an EXIF date-time (`YYYY:MM:DD HH:MM:SS`; dashes accepted, as some
/// software writes): `Ok(None)` for the blank or all-zero value of a camera without a clock.
fn parse_exif_date(text: &str) -> Result<Option<Date>, String> {
    let date_part = text.split([' ', 'T']).next().unwrap_or("").trim();
    if date_part.is_empty() || date_part.chars().all(|c| matches!(c, '0' | ':' | '-' | ' ')) {
        return Ok(None);
    }
    let mut parts = date_part.split([':', '-']);
    let (Some(y), Some(m), Some(d), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(format!("{text:?} is not YYYY:MM:DD"));
    };
    let number = |s: &str| s.parse::<u32>().map_err(|_| format!("{text:?} is not YYYY:MM:DD"));
    let (y, m, d) = (number(y)?, number(m)?, number(d)?);
    let (Ok(year), Ok(month), Ok(day)) = (i32::try_from(y), u8::try_from(m), u8::try_from(d)) else {
        return Err(format!("{text:?} is not YYYY:MM:DD"));
    };
    Date::new(year, month, day).map(Some).map_err(|e| e.to_string())
}

fn date_taken(exif: &Exif, notes: &mut Vec<String>) -> (Option<Date>, Option<&'static str>) {
    for (tag, name) in [(Tag::DateTimeOriginal, "DateTimeOriginal"), (Tag::DateTime, "DateTime")] {
        // DateTimeOriginal lives in the Exif IFD, DateTime in IFD0: both are the primary image's.
        let Some(text) = field(exif, tag).and_then(ascii) else { continue };
        match parse_exif_date(&text) {
            Ok(Some(date)) => return (Some(date), Some(name)),
            Ok(None) => notes.push(format!("{name} is blank ({text:?})")),
            Err(why) => notes.push(format!("{name} not used: {why}")),
        }
    }
    (None, None)
}

/// `jpeg` with an EXIF block (APP1, right after SOI, as cameras write it) holding `metadata`'s
/// position (degrees, minutes and seconds in hundredths, with their references), date (as
/// `DateTimeOriginal`, noon) and orientation: for benchmarks and tests that need photos as a
/// phone leaves them. Notes and `date_field` are not written. An error for bytes that do not
/// start with a JPEG SOI marker, or a block EXIF cannot hold.
pub fn jpeg_with_exif(jpeg: &[u8], metadata: &PhotoMetadata) -> Result<Vec<u8>, String> {
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        return Err("not a JPEG (no SOI marker)".into());
    }
    let dms = |degrees: f64| {
        let d = degrees.abs();
        let (whole, minutes) = (d.floor(), ((d - d.floor()) * 60.0).floor());
        let hundredths = (((d - whole) * 60.0 - minutes) * 6000.0).round();
        Value::Rational(vec![
            exif::Rational { num: whole as u32, denom: 1 },
            exif::Rational { num: minutes as u32, denom: 1 },
            exif::Rational { num: hundredths as u32, denom: 100 },
        ])
    };
    let ascii = |s: String| Value::Ascii(vec![s.into_bytes()]);
    let mut fields = Vec::new();
    if let (Some(lat), Some(lon)) = (metadata.latitude, metadata.longitude) {
        fields.push((Tag::GPSLatitudeRef, ascii(if lat < 0.0 { "S" } else { "N" }.into())));
        fields.push((Tag::GPSLatitude, dms(lat)));
        fields.push((Tag::GPSLongitudeRef, ascii(if lon < 0.0 { "W" } else { "E" }.into())));
        fields.push((Tag::GPSLongitude, dms(lon)));
    }
    if let Some(d) = metadata.date {
        fields
            .push((Tag::DateTimeOriginal, ascii(format!("{:04}:{:02}:{:02} 12:00:00", d.year(), d.month(), d.day()))));
    }
    if metadata.orientation > 1 {
        fields.push((Tag::Orientation, Value::Short(vec![u16::from(metadata.orientation)])));
    }
    if fields.is_empty() {
        return Ok(jpeg.to_vec());
    }
    let fields: Vec<Field> =
        fields.into_iter().map(|(tag, value)| Field { tag, ifd_num: In::PRIMARY, value }).collect();
    let mut writer = exif::experimental::Writer::new();
    for f in &fields {
        writer.push_field(f);
    }
    // The writer's offsets count from the start of its stream: the TIFF data alone.
    let mut tiff = Cursor::new(Vec::new());
    writer.write(&mut tiff, false).map_err(|e| e.to_string())?;
    let segment = [b"Exif\0\0".as_slice(), &tiff.into_inner()].concat();
    let length = u16::try_from(segment.len() + 2).map_err(|_| "an EXIF block over 64 KB".to_string())?;
    let mut out = Vec::with_capacity(jpeg.len() + segment.len() + 4);
    out.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xE1]);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&segment);
    out.extend_from_slice(&jpeg[2..]);
    Ok(out)
}

#[cfg(test)]
mod tests;
