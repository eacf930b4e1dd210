//! FCNet, the location encoder (`loc_net`), from PriorsNet via the reference's `dynamic_mlp.py`.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use dmlp_nn::{DropoutRng, Linear, dropout, linear};

/// The hidden width of FCNet, hard-coded to 256 in the reference whatever `mlp_d` is.
pub const FCNET_HIDDEN: usize = 256;

/// `FCResLayer`: `x + ReLU(w2(Dropout(ReLU(w1(x)))))`; keys `w1.*`, `w2.*`.
#[derive(Debug, Clone)]
pub struct FcResLayer {
    w1: Linear,
    w2: Linear,
    dropout: f32,
    rng: DropoutRng,
}

impl FcResLayer {
    pub fn new(width: usize, dropout: f32, rng: DropoutRng, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            w1: linear(width, width, true, vb.pp("w1"))?,
            w2: linear(width, width, true, vb.pp("w2"))?,
            dropout,
            rng,
        })
    }
}

impl ModuleT for FcResLayer {
    /// # Shapes
    /// `xs: [B, n]` → `[B, n]`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let ys = dmlp_nn::relu(&self.w1.forward(xs)?)?;
        let ys = dropout(&ys, self.dropout, train, &self.rng)?;
        let ys = dmlp_nn::relu(&self.w2.forward(&ys)?)?;
        xs + ys
    }
}

/// `FCNet(num_inputs, num_classes=d, num_filts=256)` with `return_feats=False`:
/// `class_emb(feats(x))`, where `feats = Linear(cin, 256) → ReLU → FCResLayer × 4` and
/// `class_emb = Linear(256, d, bias=False)`. Keys `feats.0.*`, `feats.{2..5}.w{1,2}.*`,
/// `class_emb.weight`.
#[derive(Debug, Clone)]
pub struct FcNet {
    input: Linear,
    res_layers: Vec<FcResLayer>,
    class_emb: Linear,
}

impl FcNet {
    /// `dropout` is the residual layers' dropout probability (the reference's 0.5), drawn from `rng`.
    pub fn new(num_inputs: usize, out_features: usize, dropout: f32, rng: DropoutRng, vb: VarBuilder) -> Result<Self> {
        let feats = vb.pp("feats");
        let input = linear(num_inputs, FCNET_HIDDEN, true, feats.pp("0"))?;
        let res_layers = (2..6)
            .map(|idx| FcResLayer::new(FCNET_HIDDEN, dropout, rng.clone(), feats.pp(idx)))
            .collect::<Result<Vec<_>>>()?;
        let class_emb = linear(FCNET_HIDDEN, out_features, false, vb.pp("class_emb"))?;
        Ok(Self { input, res_layers, class_emb })
    }
}

impl ModuleT for FcNet {
    /// # Shapes
    /// `loc: [B, cin]` → `[B, d]`.
    fn forward_t(&self, loc: &Tensor, train: bool) -> Result<Tensor> {
        let mut xs = dmlp_nn::relu(&self.input.forward(loc)?)?;
        for layer in &self.res_layers {
            xs = layer.forward_t(&xs, train)?;
        }
        self.class_emb.forward(&xs)
    }
}
