//! EXIF layouts as cameras, phones and editors write them, built with kamadak-exif's writer.

use exif::experimental::Writer;
use exif::{Field, In, Rational, Tag, Value};

use super::*;

fn rationals(parts: &[(u32, u32)]) -> Value {
    Value::Rational(parts.iter().map(|&(num, denom)| Rational { num, denom }).collect())
}

fn ascii(text: &str) -> Value {
    Value::Ascii(vec![text.as_bytes().to_vec()])
}

fn field(tag: Tag, value: Value) -> Field {
    Field { tag, ifd_num: In::PRIMARY, value }
}

/// A JPEG holding only an APP1 EXIF segment of `fields` (TIFF in either byte order).
fn jpeg_with(fields: &[Field], little_endian: bool) -> Vec<u8> {
    let mut writer = Writer::new();
    for f in fields {
        writer.push_field(f);
    }
    let mut tiff = Cursor::new(Vec::new());
    writer.write(&mut tiff, little_endian).unwrap();
    jpeg_with_app1(&tiff.into_inner())
}

fn jpeg_with_app1(tiff: &[u8]) -> Vec<u8> {
    let mut segment = b"Exif\0\0".to_vec();
    segment.extend_from_slice(tiff);
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE1];
    bytes.extend_from_slice(&u16::try_from(segment.len() + 2).unwrap().to_be_bytes());
    bytes.extend_from_slice(&segment);
    bytes.extend_from_slice(&[0xFF, 0xD9]);
    bytes
}

fn date(y: i32, m: u8, d: u8) -> Option<Date> {
    Some(Date::new(y, m, d).unwrap())
}

#[test]
fn a_phone_photo_south_and_west_with_its_date_and_rotation() {
    // 33° 51' 35.9" S, 151° 12' 40" E would be Sydney; this one is 22° 54' 13.2" S, 43° 10' 22.8" W
    // (Rio), seconds as hundredths, as iPhones write them; little-endian TIFF.
    let fields = [
        field(Tag::GPSLatitudeRef, ascii("S")),
        field(Tag::GPSLatitude, rationals(&[(22, 1), (54, 1), (1320, 100)])),
        field(Tag::GPSLongitudeRef, ascii("W")),
        field(Tag::GPSLongitude, rationals(&[(43, 1), (10, 1), (2280, 100)])),
        field(Tag::DateTimeOriginal, ascii("2021:05:03 14:22:07")),
        field(Tag::DateTime, ascii("2023:01:01 00:00:00")),
        field(Tag::Orientation, Value::Short(vec![6])),
    ];
    let m = read_metadata(&jpeg_with(&fields, true));
    assert!((m.latitude.unwrap() + (22.0 + 54.0 / 60.0 + 13.2 / 3600.0)).abs() < 1e-9, "{m:?}");
    assert!((m.longitude.unwrap() + (43.0 + 10.0 / 60.0 + 22.8 / 3600.0)).abs() < 1e-9, "{m:?}");
    assert_eq!((m.date, m.date_field), (date(2021, 5, 3), Some("DateTimeOriginal")), "the shutter's date first");
    assert_eq!(m.orientation, 6);
    assert!(m.notes.is_empty(), "{:?}", m.notes);
}

#[test]
fn decimal_degrees_and_decimal_minutes_big_endian() {
    // A GPS logger's decimal degrees in the first rational; a camera's decimal minutes.
    let fields = [
        field(Tag::GPSLatitudeRef, ascii("N")),
        field(Tag::GPSLatitude, rationals(&[(377_749, 10_000), (0, 1), (0, 1)])),
        field(Tag::GPSLongitudeRef, ascii("E")),
        field(Tag::GPSLongitude, rationals(&[(12, 1), (345_678, 10_000)])),
        field(Tag::DateTime, ascii("2019:12:31 23:59:59")),
    ];
    let m = read_metadata(&jpeg_with(&fields, false));
    assert!((m.latitude.unwrap() - 37.7749).abs() < 1e-12);
    assert!((m.longitude.unwrap() - (12.0 + 34.5678 / 60.0)).abs() < 1e-12);
    assert_eq!((m.date, m.date_field), (date(2019, 12, 31), Some("DateTime")), "DateTime when no DateTimeOriginal");
    assert_eq!(m.orientation, 1);
}

#[test]
fn missing_references_and_missing_fields() {
    // No references: taken as N and E, with a note each.
    let fields = [
        field(Tag::GPSLatitude, rationals(&[(10, 1), (30, 1), (0, 1)])),
        field(Tag::GPSLongitude, rationals(&[(20, 1), (15, 1), (0, 1)])),
    ];
    let m = read_metadata(&jpeg_with(&fields, true));
    assert_eq!((m.latitude, m.longitude), (Some(10.5), Some(20.25)));
    assert_eq!(m.date, None);
    assert_eq!(m.notes.len(), 2, "{:?}", m.notes);
    assert!(m.notes[0].contains("GPSLatitudeRef missing"), "{:?}", m.notes);

    // A latitude without a longitude: no position.
    let fields = [field(Tag::GPSLatitudeRef, ascii("N")), field(Tag::GPSLatitude, rationals(&[(10, 1)]))];
    let m = read_metadata(&jpeg_with(&fields, true));
    assert!(!m.has_position() && m.latitude.is_none());
    assert!(m.notes.iter().any(|n| n.contains("only one coordinate")), "{:?}", m.notes);

    // Only a date and an orientation: no position, no note about one.
    let fields =
        [field(Tag::DateTimeOriginal, ascii("2020:02:29 08:00:00")), field(Tag::Orientation, Value::Short(vec![3]))];
    let m = read_metadata(&jpeg_with(&fields, true));
    assert_eq!((m.latitude, m.date, m.orientation), (None, date(2020, 2, 29), 3));
    assert!(m.notes.is_empty(), "{:?}", m.notes);

    // No EXIF at all: nothing, and nothing to say.
    let m = read_metadata(&[0xFF, 0xD8, 0xFF, 0xD9]);
    assert_eq!(m, PhotoMetadata { orientation: 1, ..PhotoMetadata::default() });
}

#[test]
fn positions_a_receiver_did_not_fix_are_not_used() {
    let base = |lat: Value, status: Option<&str>| {
        let mut fields = vec![
            field(Tag::GPSLatitudeRef, ascii("N")),
            field(Tag::GPSLatitude, lat),
            field(Tag::GPSLongitudeRef, ascii("E")),
            field(Tag::GPSLongitude, rationals(&[(5, 1), (0, 1), (0, 1)])),
        ];
        if let Some(s) = status {
            fields.push(field(Tag::GPSStatus, ascii(s)));
        }
        read_metadata(&jpeg_with(&fields, true))
    };
    // 0/0: "no fix", as several phones write it.
    let m = base(rationals(&[(0, 0), (0, 0), (0, 0)]), None);
    assert!(!m.has_position());
    assert!(m.notes.iter().any(|n| n.contains("zero denominator")), "{:?}", m.notes);
    // Void, whatever the numbers.
    let m = base(rationals(&[(10, 1), (0, 1), (0, 1)]), Some("V"));
    assert!(!m.has_position());
    assert!(m.notes[0].contains("void"), "{:?}", m.notes);
    assert!(base(rationals(&[(10, 1), (0, 1), (0, 1)]), Some("A")).has_position(), "A: active");
    // 95° north: impossible.
    let m = base(rationals(&[(95, 1), (0, 1), (0, 1)]), None);
    assert!(!m.has_position());
    assert!(m.notes.iter().any(|n| n.contains("outside ±90")), "{:?}", m.notes);
    // A reference that is neither N nor S.
    let fields = [
        field(Tag::GPSLatitudeRef, ascii("X")),
        field(Tag::GPSLatitude, rationals(&[(10, 1)])),
        field(Tag::GPSLongitudeRef, ascii("E")),
        field(Tag::GPSLongitude, rationals(&[(10, 1)])),
    ];
    let m = read_metadata(&jpeg_with(&fields, true));
    assert!(!m.has_position() && m.notes.iter().any(|n| n.contains("'X'")), "{:?}", m.notes);
}

#[test]
fn blank_zero_and_impossible_dates_fall_back_or_go_missing() {
    let dates = |original: &str, modified: Option<&str>| {
        let mut fields = vec![field(Tag::DateTimeOriginal, ascii(original))];
        if let Some(m) = modified {
            fields.push(field(Tag::DateTime, ascii(m)));
        }
        read_metadata(&jpeg_with(&fields, true))
    };
    // A camera without a clock writes blanks or zeros: missing, then DateTime.
    let m = dates("    :  :     :  :  ", Some("2018:07:04 10:00:00"));
    assert_eq!((m.date, m.date_field), (date(2018, 7, 4), Some("DateTime")));
    assert!(m.notes[0].contains("blank"), "{:?}", m.notes);
    let m = dates("0000:00:00 00:00:00", None);
    assert_eq!(m.date, None);
    // 30 February: not used, named.
    let m = dates("2021:02:30 12:00:00", None);
    assert_eq!(m.date, None);
    assert!(m.notes[0].contains("2021-02-30"), "{:?}", m.notes);
    // Dashes (some editors) and no time.
    assert_eq!(dates("2017-03-09", None).date, date(2017, 3, 9));
    assert!(dates("yesterday", None).notes[0].contains("YYYY:MM:DD"));
}

#[test]
fn a_corrupt_exif_block_gives_notes_never_a_panic() {
    let good = jpeg_with(
        &[field(Tag::DateTimeOriginal, ascii("2021:05:03 14:22:07")), field(Tag::Orientation, Value::Short(vec![8]))],
        true,
    );
    // Every truncation of the TIFF data, and every byte flipped: notes or fields, no panic.
    let tiff_start = 4 + 2 + 6;
    let tiff = &good[tiff_start..good.len() - 2];
    let mut unreadable = 0;
    for cut in 0..tiff.len() {
        let m = read_metadata(&jpeg_with_app1(&tiff[..cut]));
        unreadable += usize::from(m.notes.iter().any(|n| n.contains("EXIF")));
    }
    assert!(unreadable > tiff.len() / 2, "{unreadable} of {} truncations noted", tiff.len());
    for i in 0..tiff.len() {
        for flip in [0x01, 0x80, 0xFF] {
            let mut bytes = tiff.to_vec();
            bytes[i] ^= flip;
            let m = read_metadata(&jpeg_with_app1(&bytes));
            assert!((1..=8).contains(&m.orientation));
        }
    }
    // Garbage after the EXIF header.
    let m = read_metadata(&jpeg_with_app1(b"not a TIFF header at all"));
    assert!(m.notes[0].starts_with("EXIF unreadable"), "{:?}", m.notes);
    // An orientation out of range.
    let m = read_metadata(&jpeg_with(&[field(Tag::Orientation, Value::Short(vec![9]))], true));
    assert_eq!(m.orientation, 1);
    assert!(m.notes[0].contains("Orientation 9"), "{:?}", m.notes);
}

#[test]
fn what_jpeg_with_exif_writes_reads_back() {
    let written = PhotoMetadata {
        latitude: Some(-33.8688),
        longitude: Some(151.2093),
        date: date(2022, 11, 5),
        orientation: 8,
        ..PhotoMetadata::default()
    };
    let bytes = jpeg_with_exif(&[0xFF, 0xD8, 0xFF, 0xD9], &written).unwrap();
    let read = read_metadata(&bytes);
    // Hundredths of a second of arc: within 2e-6 degrees.
    assert!((read.latitude.unwrap() + 33.8688).abs() < 2e-6 && (read.longitude.unwrap() - 151.2093).abs() < 2e-6);
    assert_eq!((read.date, read.date_field, read.orientation), (written.date, Some("DateTimeOriginal"), 8));
    assert!(read.notes.is_empty(), "{:?}", read.notes);
    assert!(jpeg_with_exif(b"GIF89a", &written).is_err());
    let none = PhotoMetadata { orientation: 1, ..PhotoMetadata::default() };
    assert_eq!(jpeg_with_exif(&[0xFF, 0xD8, 0xFF, 0xD9], &none).unwrap(), [0xFF, 0xD8, 0xFF, 0xD9]);
}
