//! Parameter counts per part.

use dmlp_nn::ParamStore;

/// Trainable parameters per part (BatchNorm's running statistics are buffers, not counted;
/// BatchNorm's and LayerNorm's affine weights are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct ParamCounts {
    pub backbone: usize,
    pub loc_net: usize,
    pub loc_att: usize,
    pub fc: usize,
}

impl ParamCounts {
    pub fn from_store(store: &ParamStore) -> Self {
        let mut counts = ParamCounts::default();
        for (name, var) in store.trainable_vars() {
            let n = var.elem_count();
            match name.split('.').next() {
                Some("loc_net") => counts.loc_net += n,
                Some("loc_att") => counts.loc_att += n,
                Some("fc") => counts.fc += n,
                _ => counts.backbone += n,
            }
        }
        counts
    }

    pub fn total(&self) -> usize {
        self.backbone + self.loc_net + self.loc_att + self.fc
    }
}
