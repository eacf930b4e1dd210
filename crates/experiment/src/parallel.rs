//! The collective a data-parallel run sums its gradients through.

use candle_core::Device;
use dmlp_train::{Collective, LocalCollective};

use crate::ExperimentError;

/// One collective per device (rank order) and a line saying how gradients are summed: NCCL
/// between CUDA devices when built with the `nccl` feature, on the host otherwise (the CPU, or
/// CUDA without NCCL: correct, with one copy to the host and back per step).
pub(crate) fn collectives(devices: &[Device]) -> Result<(Vec<Box<dyn Collective>>, String), ExperimentError> {
    let all_cuda = devices.iter().all(Device::is_cuda);
    if all_cuda {
        let mut seen = Vec::new();
        for device in devices {
            let id = format!("{:?}", device.location());
            if seen.contains(&id) {
                return Err(ExperimentError::Config {
                    path: "--devices".into(),
                    message: format!("a CUDA device is named twice ({id}): one replica per GPU"),
                });
            }
            seen.push(id);
        }
    }
    #[cfg(feature = "nccl")]
    if all_cuda {
        let group = dmlp_train::NcclCollective::group(devices)?;
        return Ok((
            group.into_iter().map(|c| Box::new(c) as Box<dyn Collective>).collect(),
            "gradients summed by NCCL".into(),
        ));
    }
    let how = if all_cuda {
        "gradients summed on the host (built without the `nccl` feature)"
    } else {
        "gradients summed on the host"
    };
    let group = LocalCollective::group(devices.len());
    Ok((group.into_iter().map(|c| Box::new(c) as Box<dyn Collective>).collect(), how.into()))
}
