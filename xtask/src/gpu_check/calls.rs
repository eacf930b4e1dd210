//! The host's time per call of each kind a training step makes: an element-wise op (a candle
//! kernel launch with its output's allocation and free), an allocation and free alone, a cuDNN
//! convolution, a cuDNN BatchNorm and a cuBLAS product, each on tensors so small that the device
//! keeps up with the host. With the counts per step of the CUDA dry run (`.ci/cuda-dryrun.sh`:
//! launches, cuDNN and cuBLAS calls, allocations), these say what a host-bound step's time is
//! made of, which no count alone can.

use std::time::Instant;

use candle_core::{DType, Device, ModuleT, Tensor};
use serde::Serialize;

/// Timed calls of each kind (after as many untimed).
const CALLS: usize = 2000;

/// Microseconds of host time per call of one kind.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CallCost {
    pub(crate) call: String,
    pub(crate) host_us: f64,
}

/// The host's time per call of each kind on `device`, the device synchronised before and after
/// each kind (outside the timer).
pub(crate) fn measure(device: &Device) -> anyhow::Result<Vec<CallCost>> {
    let vars = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vars, DType::F32, device);
    let x = Tensor::randn(0f32, 1.0, (2, 8, 8, 8), device)?;
    let weight = Tensor::randn(0f32, 0.1, (8, 8, 3, 3), device)?;
    let batch_norm = dmlp_nn::batch_norm(8, vb.pp("bn"))?;
    let square = Tensor::randn(0f32, 1.0, (16, 16), device)?;
    let mut costs = Vec::new();
    let mut time = |call: &str, f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<()> {
        for _ in 0..CALLS {
            f()?;
        }
        device.synchronize()?;
        let start = Instant::now();
        for _ in 0..CALLS {
            f()?;
        }
        let host_us = start.elapsed().as_secs_f64() * 1e6 / CALLS as f64;
        device.synchronize()?;
        costs.push(CallCost { call: call.into(), host_us });
        Ok(())
    };
    time("element-wise op (kernel launch, allocation, free)", &mut || {
        x.affine(2.0, 1.0)?;
        Ok(())
    })?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        time("allocation + free", &mut || {
            // SAFETY: never read; freed at once.
            unsafe { cuda.alloc::<f32>(1024) }?;
            Ok(())
        })?;
    }
    let padded = dmlp_nn::Conv2dConfig::new(1, 1);
    time("convolution 3×3 (cuDNN on CUDA)", &mut || {
        dmlp_nn::conv2d_forward(&x, &weight, padded)?;
        Ok(())
    })?;
    time("BatchNorm, training (cuDNN on CUDA)", &mut || {
        batch_norm.forward_t(&x, true)?;
        Ok(())
    })?;
    time("matrix product (cuBLAS on CUDA)", &mut || {
        square.matmul(&square)?;
        Ok(())
    })?;
    Ok(costs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_kind_is_timed_on_the_cpu() {
        let costs = super::measure(&candle_core::Device::Cpu).unwrap();
        assert_eq!(costs.len(), 4, "{costs:?}");
        assert!(costs.iter().all(|c| c.host_us.is_finite() && c.host_us > 0.0), "{costs:?}");
    }
}
