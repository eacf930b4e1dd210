//! The "†" variants of the supplement's Table S5: Dynamic MLP-C's structure with only the
//! batched matrix product replaced by a vector fusion.
//!
//! **Reconstruction, not the paper's code** (spec §12, a guess at "only the mat-mul replaced"):
//! the two branches of Dynamic MLP-C stay (`conv11 → conv12` and `conv21 → conv22`, both from
//! `[x; g]`), but `conv12` and `conv22` now map to `o` values, `u` and `w`, fused by `u + w`,
//! `u ⊙ w`, or `proj([u; w])` (`Linear(2o → o)`); then `br` (LN + ReLU) and `conv3`, as in
//! Dynamic MLP-C. Without the generated `i × o` matrix these heads are much smaller than Dynamic
//! MLP-C's, while the paper lists 47.4 M for every row of Table S5: its layers must differ, and
//! `dmlp params` shows ours. Keys: `conv2.{n}.static_conv.{conv11.conv.0, conv12, conv21.conv.0,
//! conv22, proj, br.0, conv3.conv.*}`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use dmlp_nn::{Linear, linear};

use crate::blocks::{Basic1d, NormRelu};
use crate::matched::FuseOp;

/// One "†" block `(i → o, ℓ)`.
#[derive(Debug, Clone)]
pub struct DaggerBlock {
    op: FuseOp,
    conv11: Basic1d,
    conv12: Linear,
    conv21: Basic1d,
    conv22: Linear,
    proj: Option<Linear>,
    br: NormRelu,
    conv3: Basic1d,
}

impl DaggerBlock {
    pub fn new(op: FuseOp, i: usize, o: usize, loc_planes: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            op,
            conv11: Basic1d::new(i + loc_planes, i, true, vb.pp("conv11"))?,
            conv12: linear(i, o, true, vb.pp("conv12"))?,
            conv21: Basic1d::new(i + loc_planes, i, true, vb.pp("conv21"))?,
            conv22: linear(i, o, true, vb.pp("conv22"))?,
            proj: match op {
                FuseOp::Concatenation => Some(linear(2 * o, o, true, vb.pp("proj"))?),
                FuseOp::Addition | FuseOp::Multiplication => None,
            },
            br: NormRelu::new(o, vb.pp("br"))?,
            conv3: Basic1d::new(o, o, false, vb.pp("conv3"))?,
        })
    }

    /// # Shapes
    /// `x: [B, i]`, `g: [B, ℓ]` → `[B, o]`.
    pub fn forward(&self, x: &Tensor, g: &Tensor) -> Result<Tensor> {
        let z = dmlp_nn::cat_promoted(&[x, g], 1)?;
        let u = self.conv12.forward(&self.conv11.forward(&z)?)?;
        let w = self.conv22.forward(&self.conv21.forward(&z)?)?;
        let fused = match (&self.op, &self.proj) {
            (FuseOp::Concatenation, Some(proj)) => proj.forward(&Tensor::cat(&[&u, &w], 1)?)?,
            (FuseOp::Multiplication, _) => (u * w)?,
            _ => (u + w)?,
        };
        self.conv3.forward(&self.br.forward(&fused)?)
    }
}
