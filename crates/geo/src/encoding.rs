//! The sin/cos location encoding of the reference (`dataset.py`, spec §2).

use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

use crate::{Date, GeoError};

/// Which metadata the model sees: the reference's `--metadata` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metadata {
    /// Latitude, longitude and date: 6 inputs.
    GeoTemporal,
    /// Latitude and longitude: 4 inputs.
    Geo,
    /// Date: 2 inputs.
    Temporal,
}

impl Metadata {
    pub const ALL: [Metadata; 3] = [Metadata::GeoTemporal, Metadata::Geo, Metadata::Temporal];

    /// Width of the encoded vector (the reference's `mlp_cin`).
    pub fn n_inputs(self) -> usize {
        2 * self.n_scalars()
    }

    pub fn uses_location(self) -> bool {
        matches!(self, Metadata::GeoTemporal | Metadata::Geo)
    }

    pub fn uses_date(self) -> bool {
        matches!(self, Metadata::GeoTemporal | Metadata::Temporal)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Metadata::GeoTemporal => "geo_temporal",
            Metadata::Geo => "geo",
            Metadata::Temporal => "temporal",
        }
    }

    fn n_scalars(self) -> usize {
        2 * usize::from(self.uses_location()) + usize::from(self.uses_date())
    }
}

impl fmt::Display for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Metadata {
    type Err = GeoError;

    fn from_str(s: &str) -> Result<Self, GeoError> {
        Metadata::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| GeoError::UnknownMetadata(s.to_owned()))
    }
}

/// Where and when one photo was taken; any field may be missing. Present fields are valid.
///
/// The time of year comes from a calendar date or, where a dataset gives only that, from a
/// fraction of the year in [0, 1] (the `date_c` of PriorsNet's iNat 2017/2018 location files),
/// encoded as `2·date_c − 1`, PriorsNet's own mapping, which the day-of-year ratio of a date
/// matches to within a day.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Observation {
    latitude: Option<f64>,
    longitude: Option<f64>,
    date: Option<Date>,
    year_fraction: Option<f64>,
}

impl Observation {
    /// Validates the fields that are present: latitude in [−90, 90], longitude in [−180, 180],
    /// both finite.
    pub fn new(latitude: Option<f64>, longitude: Option<f64>, date: Option<Date>) -> Result<Self, GeoError> {
        if let Some(lat) = latitude
            && !(lat.is_finite() && (-90.0..=90.0).contains(&lat))
        {
            return Err(GeoError::Latitude(lat));
        }
        if let Some(lon) = longitude
            && !(lon.is_finite() && (-180.0..=180.0).contains(&lon))
        {
            return Err(GeoError::Longitude(lon));
        }
        Ok(Self { latitude, longitude, date, year_fraction: None })
    }

    /// This observation with the time of year given as a fraction of the year (`date_c`), used
    /// when it has no calendar date.
    pub fn with_year_fraction(self, fraction: f64) -> Result<Self, GeoError> {
        if !(fraction.is_finite() && (0.0..=1.0).contains(&fraction)) {
            return Err(GeoError::YearFraction(fraction));
        }
        Ok(Self { year_fraction: Some(fraction), ..self })
    }

    /// [`Observation::new`] with the date as the datasets write it (see [`Date::parse`]).
    pub fn parse(latitude: Option<f64>, longitude: Option<f64>, date: Option<&str>) -> Result<Self, GeoError> {
        let date = date.map(Date::parse).transpose()?;
        Self::new(latitude, longitude, date)
    }

    pub fn latitude(&self) -> Option<f64> {
        self.latitude
    }

    pub fn longitude(&self) -> Option<f64> {
        self.longitude
    }

    pub fn date(&self) -> Option<Date> {
        self.date
    }

    /// The fraction of the year given instead of a date (`date_c`), if any.
    pub fn year_fraction(&self) -> Option<f64> {
        self.year_fraction
    }

    /// Whether the time of year is known (a date or a fraction of the year).
    pub fn has_time_of_year(&self) -> bool {
        self.date.is_some() || self.year_fraction.is_some()
    }

    /// Whether every field that `metadata` uses is present (else the encoding is all zeros).
    pub fn is_complete_for(&self, metadata: Metadata) -> bool {
        let location_ok = !metadata.uses_location() || (self.latitude.is_some() && self.longitude.is_some());
        let date_ok = !metadata.uses_date() || self.has_time_of_year();
        location_ok && date_ok
    }

    /// The encoded vector of width `metadata.n_inputs()`:
    /// `[sin πlat', sin πlon', sin πt, cos πlat', cos πlon', cos πt]` for `geo_temporal`, the
    /// fields the mode does not use left out; all zeros when a field the mode uses is missing.
    pub fn encode(&self, metadata: Metadata) -> Vec<f64> {
        let n = metadata.n_scalars();
        let mut out = vec![0.0; 2 * n];
        let Some(scalars) = self.scaled(metadata) else {
            return out;
        };
        for (idx, value) in scalars[..n].iter().enumerate() {
            out[idx] = (PI * value).sin();
            out[n + idx] = (PI * value).cos();
        }
        out
    }

    /// [`Observation::encode`] into a row of a batch.
    ///
    /// # Panics
    /// When `out.len() != metadata.n_inputs()`, a programming error.
    pub fn encode_into(&self, metadata: Metadata, out: &mut [f32]) {
        assert_eq!(out.len(), metadata.n_inputs(), "encoding buffer width");
        for (slot, value) in out.iter_mut().zip(self.encode(metadata)) {
            *slot = value as f32;
        }
    }

    /// The raw scalars `[lat/90, lon/180, t]` the mode uses, in that order; `None` when one is missing.
    fn scaled(&self, metadata: Metadata) -> Option<[f64; 3]> {
        let mut scalars = [0.0f64; 3];
        let mut len = 0;
        if metadata.uses_location() {
            scalars[0] = self.latitude? / 90.0;
            scalars[1] = self.longitude? / 180.0;
            len = 2;
        }
        if metadata.uses_date() {
            scalars[len] = match (self.date, self.year_fraction) {
                (Some(date), _) => date.scaled_day_of_year(),
                (None, Some(fraction)) => 2.0 * fraction - 1.0,
                (None, None) => return None,
            };
        }
        Some(scalars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(lat: f64, lon: f64, date: &str) -> Observation {
        Observation::parse(Some(lat), Some(lon), Some(date)).unwrap()
    }

    #[test]
    fn a_fraction_of_the_year_stands_in_for_a_missing_date() {
        let with_fraction = Observation::new(Some(10.0), Some(20.0), None).unwrap().with_year_fraction(0.25).unwrap();
        assert!(with_fraction.is_complete_for(Metadata::GeoTemporal));
        let encoded = with_fraction.encode(Metadata::Temporal);
        assert!((encoded[0] - (PI * -0.5).sin()).abs() < 1e-12 && (encoded[1] - (PI * -0.5).cos()).abs() < 1e-12);
        // 2·date_c − 1 and the day-of-year ratio agree to within a day: 1 July 2011.
        let dated = obs(10.0, 20.0, "2011-07-01").encode(Metadata::Temporal);
        let fraction = Observation::new(None, None, None).unwrap().with_year_fraction(181.0 / 364.0).unwrap();
        let from_fraction = fraction.encode(Metadata::Temporal);
        assert!((dated[0] - from_fraction[0]).abs() < 2.0 * PI / 365.0, "{dated:?} vs {from_fraction:?}");
        // A date wins over a fraction; an impossible fraction is an error.
        let both = obs(10.0, 20.0, "2011-07-01").with_year_fraction(0.9).unwrap();
        assert_eq!(both.encode(Metadata::Temporal), dated);
        for bad in [-0.1, 1.5, f64::NAN] {
            assert!(Observation::default().with_year_fraction(bad).is_err());
        }
    }

    #[test]
    fn spec_test_vectors() {
        // Spec §2 table, rounded to 6 decimals there.
        let cases = [
            (obs(44.02901, -73.17711, "2011-07-15"), [0.999426, -0.957204, 0.230306, 0.033887, 0.289414, 0.973118]),
            (obs(40.77782, -124.57932, "2008-09-20"), [0.989159, -0.823341, 0.983798, 0.146849, -0.567547, 0.179281]),
            (obs(-21.93073, 114.12239, "2007-10-31"), [-0.692917, 0.912675, 0.867456, 0.721017, -0.408687, -0.497513]),
            (obs(90.0, -180.0, "1900-03-01"), [0.0, 0.0, -0.858764, -1.0, -1.0, -0.512371]),
        ];
        for (observation, expected) in cases {
            let got = observation.encode(Metadata::GeoTemporal);
            for (g, e) in got.iter().zip(expected) {
                assert!((g - e).abs() < 1e-6, "{got:?} vs {expected:?}");
            }
        }
    }

    #[test]
    fn modes_pick_their_fields_in_order() {
        let o = obs(44.02901, -73.17711, "2011-07-15");
        let full = o.encode(Metadata::GeoTemporal);
        assert_eq!(o.encode(Metadata::Geo), vec![full[0], full[1], full[3], full[4]]);
        assert_eq!(o.encode(Metadata::Temporal), vec![full[2], full[5]]);
        let mut buf = [0f32; 4];
        o.encode_into(Metadata::Geo, &mut buf);
        assert_eq!(buf[0], full[0] as f32);
    }

    #[test]
    fn missing_fields_zero_only_the_modes_that_use_them() {
        let no_date = Observation::new(Some(10.0), Some(10.0), None).unwrap();
        assert_eq!(no_date.encode(Metadata::GeoTemporal), vec![0.0; 6]);
        assert_eq!(no_date.encode(Metadata::Temporal), vec![0.0; 2]);
        assert!(no_date.encode(Metadata::Geo).iter().all(|v| *v != 0.0));
        let no_lat = Observation::parse(None, Some(10.0), Some("2010-01-01")).unwrap();
        assert_eq!(no_lat.encode(Metadata::Geo), vec![0.0; 4]);
        assert!(no_lat.encode(Metadata::Temporal).iter().all(|v| *v != 0.0));
    }

    #[test]
    fn impossible_coordinates_are_errors_naming_the_value() {
        let err = Observation::new(Some(95.0), Some(0.0), None).unwrap_err();
        assert_eq!(err, GeoError::Latitude(95.0));
        assert!(err.to_string().contains("95"));
        assert!(matches!(Observation::new(Some(f64::NAN), Some(0.0), None), Err(GeoError::Latitude(v)) if v.is_nan()));
        assert_eq!(Observation::new(Some(0.0), Some(-180.5), None), Err(GeoError::Longitude(-180.5)));
        assert!(matches!(Observation::new(None, Some(f64::INFINITY), None), Err(GeoError::Longitude(_))));
        assert!(matches!(
            Observation::parse(Some(0.0), Some(0.0), Some("2011-02-30")),
            Err(GeoError::InvalidDate { .. })
        ));
    }

    #[test]
    fn metadata_names_round_trip() {
        for m in Metadata::ALL {
            assert_eq!(m.as_str().parse::<Metadata>().unwrap(), m);
        }
        assert_eq!(
            [Metadata::GeoTemporal.n_inputs(), Metadata::Geo.n_inputs(), Metadata::Temporal.n_inputs()],
            [6, 4, 2]
        );
        assert!("geotemporal".parse::<Metadata>().is_err());
    }
}
