//! PriorsNet's input from Dynamic MLP's location encoding.
//!
//! PriorsNet encodes `[sin πlon', sin πlat', cos πlon', cos πlat', sin πt, cos πt]` with `lon' =
//! lon/180`, `lat' = lat/90`, `t = 2·date_c − 1` (spec §1.2); Dynamic MLP's loader gives
//! `[sin πlat', sin πlon', sin πt, cos πlat', cos πlon', cos πt]` with `t = 2·doy/days − 1`
//! (`geo_temporal`), or `[sin πlat', sin πlon', cos πlat', cos πlon']` (`geo`). We take `date_c`
//! as the day-of-year fraction `doy/days` (how iNat's `date_c` was computed is **UNVERIFIED**,
//! spec §4.4), so PriorsNet's vector is a permutation of Dynamic MLP's. A missing location (the
//! all-zero vector: a real one has `sin² + cos² = 1`) marks the row invalid: no prior for it.

use candle_core::{Result, Tensor};
use dmlp_geo::Metadata;

/// Which Dynamic MLP columns make each PriorsNet column.
pub fn priorsnet_columns(metadata: Metadata) -> std::result::Result<&'static [usize], String> {
    match metadata {
        // [sin lat, sin lon, sin t, cos lat, cos lon, cos t] → [sin lon, sin lat, cos lon, cos lat, sin t, cos t]
        Metadata::GeoTemporal => Ok(&[1, 0, 4, 3, 2, 5]),
        // [sin lat, sin lon, cos lat, cos lon] → [sin lon, sin lat, cos lon, cos lat]
        Metadata::Geo => Ok(&[1, 0, 3, 2]),
        Metadata::Temporal => Err("PriorsNet needs a location: metadata geo or geo_temporal".into()),
    }
}

/// `(inputs [B, cin], valid per row)` for PriorsNet from Dynamic MLP's encoded `loc: [B, cin]`.
pub fn priorsnet_inputs(loc: &Tensor, metadata: Metadata) -> Result<(Tensor, Vec<bool>)> {
    let columns = priorsnet_columns(metadata).map_err(candle_core::Error::Msg)?;
    if loc.dim(1)? != columns.len() {
        candle_core::bail!("PriorsNet: {} location columns for metadata {metadata}", loc.dim(1)?);
    }
    let index = Tensor::from_vec(columns.iter().map(|&c| c as u32).collect::<Vec<_>>(), columns.len(), loc.device())?;
    let inputs = loc.index_select(&index, 1)?;
    let valid =
        loc.abs()?.sum(1)?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?.iter().map(|s| *s > 0.0).collect();
    Ok((inputs, valid))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};
    use dmlp_geo::{Metadata, Observation};

    use super::*;

    #[test]
    fn the_permutation_gives_priorsnets_own_layout() {
        let obs = Observation::parse(Some(44.02901), Some(-73.17711), Some("2011-07-15")).unwrap();
        let dmlp: Vec<f32> = obs.encode(Metadata::GeoTemporal).iter().map(|v| *v as f32).collect();
        let loc = Tensor::from_vec([dmlp.clone(), vec![0.0; 6]].concat(), (2, 6), &Device::Cpu).unwrap();
        let (inputs, valid) = priorsnet_inputs(&loc, Metadata::GeoTemporal).unwrap();
        assert_eq!(valid, [true, false]);
        let row: Vec<f32> = inputs.get(0).unwrap().to_vec1().unwrap();
        let pi = std::f64::consts::PI;
        let (lon, lat) = (-73.17711f64 / 180.0, 44.02901f64 / 90.0);
        let t = obs.date().unwrap().scaled_day_of_year();
        let expected =
            [(pi * lon).sin(), (pi * lat).sin(), (pi * lon).cos(), (pi * lat).cos(), (pi * t).sin(), (pi * t).cos()];
        for (a, b) in row.iter().zip(expected) {
            assert!((f64::from(*a) - b).abs() < 1e-6, "{row:?} vs {expected:?}");
        }
        assert!(priorsnet_columns(Metadata::Temporal).is_err());
    }
}
