//! Dynamic MLP blocks A, B and C (the reference's `Dynamic_MLP_A/B/C`, spec §4).
//!
//! Notation: `i` input width, `o` output width, `ℓ` location width; `x: [B, i]` is the image
//! side, `g: [B, ℓ]` the location features. Each block projects a vector with a matrix generated
//! per sample from the location (and, in C, the image).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use dmlp_nn::{LayerNorm, Linear, generated_projection, layer_norm, linear};

use crate::blocks::{Basic1d, NormRelu};

/// Version A: `ReLU(LN(x · reshape(get_weight(g), [i, o])))`. Keys `get_weight.*`, `norm.*`.
#[derive(Debug, Clone)]
pub struct DynamicMlpA {
    get_weight: Linear,
    norm: LayerNorm,
    dims: (usize, usize),
}

impl DynamicMlpA {
    pub fn new(i: usize, o: usize, loc_planes: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            get_weight: linear(loc_planes, i * o, true, vb.pp("get_weight"))?,
            norm: layer_norm(o, vb.pp("norm"))?,
            dims: (i, o),
        })
    }

    /// # Shapes
    /// `x: [B, i]`, `g: [B, ℓ]` → `[B, o]`.
    pub fn forward(&self, x: &Tensor, g: &Tensor) -> Result<Tensor> {
        let (i, o) = self.dims;
        let ys = generated_projection(x, g, &self.get_weight, (i, o))?;
        dmlp_nn::relu(&self.norm.forward(&ys)?)
    }
}

/// Version B: the image vector goes through `conv11 → conv12`, the matrix comes from the location
/// alone through `conv21 → conv22`; then `br` (LN + ReLU) and `conv3` (Linear without bias, LN,
/// ReLU).
#[derive(Debug, Clone)]
pub struct DynamicMlpB {
    conv11: Basic1d,
    conv12: Linear,
    conv21: Basic1d,
    conv22: Linear,
    br: NormRelu,
    conv3: Basic1d,
    dims: (usize, usize),
}

impl DynamicMlpB {
    pub fn new(i: usize, o: usize, loc_planes: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv11: Basic1d::new(i, i, true, vb.pp("conv11"))?,
            conv12: linear(i, i, true, vb.pp("conv12"))?,
            conv21: Basic1d::new(loc_planes, i, true, vb.pp("conv21"))?,
            conv22: linear(i, i * o, true, vb.pp("conv22"))?,
            br: NormRelu::new(o, vb.pp("br"))?,
            conv3: Basic1d::new(o, o, false, vb.pp("conv3"))?,
            dims: (i, o),
        })
    }

    /// # Shapes
    /// `x: [B, i]`, `g: [B, ℓ]` → `[B, o]`.
    pub fn forward(&self, x: &Tensor, g: &Tensor) -> Result<Tensor> {
        let (i, o) = self.dims;
        let u = self.conv12.forward(&self.conv11.forward(x)?)?;
        let h = self.conv21.forward(g)?;
        let ys = self.br.forward(&generated_projection(&u, &h, &self.conv22, (i, o))?)?;
        self.conv3.forward(&ys)
    }
}

/// Version C, the reference's default: both the projected vector and the generated matrix come
/// from `[x; g]` (image first), so the raw image vector is never used alone.
#[derive(Debug, Clone)]
pub struct DynamicMlpC {
    conv11: Basic1d,
    conv12: Linear,
    conv21: Basic1d,
    conv22: Linear,
    br: NormRelu,
    conv3: Basic1d,
    dims: (usize, usize),
}

impl DynamicMlpC {
    pub fn new(i: usize, o: usize, loc_planes: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv11: Basic1d::new(i + loc_planes, i, true, vb.pp("conv11"))?,
            conv12: linear(i, i, true, vb.pp("conv12"))?,
            conv21: Basic1d::new(i + loc_planes, i, true, vb.pp("conv21"))?,
            conv22: linear(i, i * o, true, vb.pp("conv22"))?,
            br: NormRelu::new(o, vb.pp("br"))?,
            conv3: Basic1d::new(o, o, false, vb.pp("conv3"))?,
            dims: (i, o),
        })
    }

    /// # Shapes
    /// `x: [B, i]`, `g: [B, ℓ]` → `[B, o]`.
    pub fn forward(&self, x: &Tensor, g: &Tensor) -> Result<Tensor> {
        let (i, o) = self.dims;
        let z = dmlp_nn::cat_promoted(&[x, g], 1)?;
        let u = self.conv12.forward(&self.conv11.forward(&z)?)?;
        let h = self.conv21.forward(&z)?;
        let ys = self.br.forward(&generated_projection(&u, &h, &self.conv22, (i, o))?)?;
        self.conv3.forward(&ys)
    }
}
