//! The composed classifier.

use std::collections::BTreeSet;

use candle_core::{DType, Device, Module, Tensor};
use dmlp_backbones::Backbone;
use dmlp_fusion::{FusionHead, FusionOutput};
use dmlp_nn::{DropoutRng, Linear, ParamStore, linear};

use crate::{ModelConfig, ModelError, ParamCounts};

/// Backbone → pooled features → (location encoder + fusion) → `fc`.
#[derive(Debug)]
pub struct Classifier {
    config: ModelConfig,
    store: ParamStore,
    device: Device,
    backbone: Option<Backbone>,
    /// The store's names that belong to the backbone.
    backbone_names: BTreeSet<String>,
    head: Option<FusionHead>,
    fc: Linear,
    num_features: usize,
    dropout_rng: DropoutRng,
}

/// Everything the forward pass computes, for parity checks, features and logits.
#[derive(Debug, Clone)]
pub struct ClassifierOutput {
    /// Pooled image features `[B, F]` (the input, for a model without a backbone).
    pub features: Tensor,
    /// `loc_net(loc)`: `[B, d]`, with a fusion head.
    pub loc_features: Option<Tensor>,
    /// `loc_att(features, loc_features)`: `[B, F]`, with a fusion head.
    pub fused: Option<Tensor>,
    /// `fc(fused or features)`: `[B, C]`.
    pub logits: Tensor,
}

impl Classifier {
    /// Builds the model with parameters drawn from the initialisation stream `seed` (PyTorch's
    /// initialisations: torchvision's for ResNet, PyTorch's defaults elsewhere).
    pub fn new(config: &ModelConfig, seed: u64, device: &Device) -> Result<Self, ModelError> {
        Self::build(config, ParamStore::new(seed), device)
    }

    /// Builds the model with every parameter zero: for counting and for loading weights right
    /// after, without paying for random initialisation.
    pub fn new_zeroed(config: &ModelConfig, device: &Device) -> Result<Self, ModelError> {
        Self::build(config, ParamStore::zeroed(), device)
    }

    fn build(config: &ModelConfig, store: ParamStore, device: &Device) -> Result<Self, ModelError> {
        config.validate()?;
        let vb = store.var_builder(config.dtype.dtype(), device);
        let dropout_rng = DropoutRng::new(0);
        let backbone =
            config.backbone.as_ref().map(|spec| Backbone::new(spec, dropout_rng.clone(), vb.clone())).transpose()?;
        let backbone_names: BTreeSet<String> = store.vars().into_iter().map(|(name, _)| name).collect();
        let num_features = match (&backbone, config.feature_dim) {
            (Some(backbone), _) => backbone.num_features(),
            (None, Some(dim)) => dim,
            (None, None) => unreachable!("validated: a backbone or feature_dim"),
        };
        let head = config
            .fusion
            .as_ref()
            .map(|fusion| FusionHead::new(num_features, config.loc_inputs(), fusion, dropout_rng.clone(), vb.clone()))
            .transpose()?;
        let fc = linear(num_features, config.num_classes, true, vb.pp("fc"))?;
        Ok(Self {
            config: config.clone(),
            store,
            device: device.clone(),
            backbone,
            backbone_names,
            head,
            fc,
            num_features,
            dropout_rng,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The names of the backbone's variables (parameters and BatchNorm statistics), or `None`
    /// for a model without a backbone.
    pub fn backbone_names(&self) -> Option<&BTreeSet<String>> {
        self.backbone.as_ref().map(|_| &self.backbone_names)
    }

    /// The model's variables by their `state_dict` names.
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Classes `fc` scores.
    pub fn num_classes(&self) -> usize {
        self.config.num_classes
    }

    pub fn dtype(&self) -> DType {
        self.config.dtype.dtype()
    }

    /// Width of the pooled image features.
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// Restarts the dropout layers' random stream (the trainer does this before each step, so a
    /// run is reproducible).
    pub fn reseed_dropout(&self, seed: u64) {
        self.dropout_rng.reseed(seed);
    }

    pub fn param_counts(&self) -> ParamCounts {
        ParamCounts::from_store(&self.store)
    }

    /// # Shapes
    /// `images: [B, 3, H, W]`, `loc: [B, cin]` (required with a fusion head, ignored without)
    /// → logits `[B, C]` and the intermediate tensors.
    pub fn forward_t(
        &self,
        images: &Tensor,
        loc: Option<&Tensor>,
        train: bool,
    ) -> Result<ClassifierOutput, ModelError> {
        let Some(backbone) = &self.backbone else {
            return Err(ModelError::Input(
                "this model has no backbone: call forward_features_t with pooled features".into(),
            ));
        };
        check_rank(images, 4, "images")?;
        let features = backbone.forward_features(&images.to_dtype(self.dtype())?, train)?;
        self.forward_features_t(&features, loc, train)
    }

    /// The model after the backbone: from pooled features `[B, F]` (and `loc: [B, cin]`).
    pub fn forward_features_t(
        &self,
        features: &Tensor,
        loc: Option<&Tensor>,
        train: bool,
    ) -> Result<ClassifierOutput, ModelError> {
        check_rank(features, 2, "features")?;
        if features.dim(1)? != self.num_features {
            return Err(ModelError::Input(format!(
                "features have width {}, the model expects {}",
                features.dim(1)?,
                self.num_features
            )));
        }
        let features = features.to_dtype(self.dtype())?;
        let Some(head) = &self.head else {
            let logits = self.fc.forward(&features)?;
            return Ok(ClassifierOutput { features, loc_features: None, fused: None, logits });
        };
        let loc =
            loc.ok_or_else(|| ModelError::Input("this model fuses locations: pass the encoded locations".into()))?;
        check_rank(loc, 2, "loc")?;
        let (b, cin) = loc.dims2()?;
        if b != features.dim(0)? || cin != self.config.loc_inputs() {
            return Err(ModelError::Input(format!(
                "loc has shape [{b}, {cin}], expected [{}, {}] ({} metadata)",
                features.dim(0)?,
                self.config.loc_inputs(),
                self.config.metadata.map_or("no", |m| m.as_str())
            )));
        }
        let FusionOutput { loc_features, fused } = head.forward_t(&features, &loc.to_dtype(self.dtype())?, train)?;
        let logits = self.fc.forward(&fused)?;
        Ok(ClassifierOutput { features, loc_features: Some(loc_features), fused: Some(fused), logits })
    }
}

fn check_rank(tensor: &Tensor, rank: usize, what: &str) -> Result<(), ModelError> {
    if tensor.rank() == rank {
        Ok(())
    } else {
        Err(ModelError::Input(format!("{what} must have rank {rank}, got shape {:?}", tensor.dims())))
    }
}
