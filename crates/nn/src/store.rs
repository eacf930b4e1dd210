//! A model's parameters and buffers by name, initialised from a seeded random stream.
//!
//! candle's `VarMap` initialises from an RNG that cannot be seeded on the CPU, so two builds of
//! the same model differ. [`ParamStore`] is a `VarBuilder` backend that creates each variable the
//! first time a layer asks for it, drawing from its own ChaCha stream: the same seed and the same
//! construction order give bit-identical parameters.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, Device, Result, Shape, Tensor, Var, bail};
use candle_nn::{Init, VarBuilder, var_builder::SimpleBackend};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Named variables (`conv1.weight`, `layer1.0.bn1.running_mean`, …), shared by clones.
#[derive(Clone)]
pub struct ParamStore {
    inner: Arc<Inner>,
}

struct Inner {
    vars: Mutex<BTreeMap<String, Var>>,
    rng: Mutex<ChaCha8Rng>,
    /// Create every variable as zeros, ignoring its initialisation (for counting or loading).
    zeroed: bool,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamStore").field("n_vars", &self.lock_vars().len()).finish()
    }
}

impl ParamStore {
    /// An empty store whose initialisations draw from the stream `seed`.
    pub fn new(seed: u64) -> Self {
        Self::with_inner(seed, false)
    }

    /// An empty store that creates every variable filled with zeros: for counting parameters, or
    /// for loading weights right after building, without paying for random initialisation.
    pub fn zeroed() -> Self {
        Self::with_inner(0, true)
    }

    fn with_inner(seed: u64, zeroed: bool) -> Self {
        let rng = Mutex::new(ChaCha8Rng::seed_from_u64(seed));
        Self { inner: Arc::new(Inner { vars: Mutex::new(BTreeMap::new()), rng, zeroed }) }
    }

    /// A `VarBuilder` that creates variables in this store.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// Every variable, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.lock_vars().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Every variable's current value by name (parameters and buffers): what a checkpoint holds.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.lock_vars().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect()
    }

    /// The trainable parameters: every variable but the BatchNorm buffers.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.vars().into_iter().filter(|(name, _)| !crate::is_buffer_name(name)).collect()
    }

    pub fn get(&self, name: &str) -> Option<Var> {
        self.lock_vars().get(name).cloned()
    }

    fn lock_vars(&self) -> MutexGuard<'_, BTreeMap<String, Var>> {
        // A panic while holding the lock cannot leave the map half-written: recover the data.
        self.inner.vars.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sample(&self, shape: &Shape, init: Init) -> Result<Vec<f32>> {
        let n = shape.elem_count();
        if self.inner.zeroed {
            return Ok(vec![0.0; n]);
        }
        let mut rng = self.inner.rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match init {
            Init::Const(value) => Ok(vec![value as f32; n]),
            Init::Uniform { lo, up } => Ok((0..n).map(|_| rng.random_range(lo..=up) as f32).collect()),
            Init::Randn { mean, stdev } => {
                let normal = Normal::new(mean, stdev)
                    .map_err(|err| candle_core::Error::Msg(format!("normal({mean}, {stdev}): {err}")))?;
                Ok((0..n).map(|_| normal.sample(&mut *rng) as f32).collect())
            }
            Init::Kaiming { .. } => {
                bail!("ParamStore does not implement Init::Kaiming; use dmlp_nn::init")
            }
        }
    }
}

impl SimpleBackend for ParamStore {
    fn get(&self, shape: Shape, name: &str, init: Init, dtype: DType, device: &Device) -> Result<Tensor> {
        if let Some(var) = self.get(name) {
            if var.shape() != &shape {
                bail!("variable {name} was created with shape {:?} and is now asked for with {:?}", var.shape(), shape)
            }
            return Ok(var.as_tensor().clone());
        }
        let values = self.sample(&shape, init)?;
        let tensor = Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?;
        let var = Var::from_tensor(&tensor)?;
        let out = var.as_tensor().clone();
        self.lock_vars().insert(name.to_owned(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _device: &Device) -> Result<Tensor> {
        match self.get(name) {
            Some(var) => Ok(var.as_tensor().clone()),
            None => bail!("no variable {name} in the parameter store"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.lock_vars().contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_parameters() {
        let build = |seed| {
            let store = ParamStore::new(seed);
            let vb = store.var_builder(DType::F32, &Device::Cpu);
            crate::linear(8, 4, true, vb.pp("fc")).unwrap();
            store.get("fc.weight").unwrap().as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(build(7), build(7));
        assert_ne!(build(7), build(8));
        let w = build(7);
        let bound = 1.0 / 8f32.sqrt();
        assert!(w.iter().all(|v| v.abs() <= bound) && w.iter().any(|v| v.abs() > bound / 2.0));
    }
}
