//! The collective a data-parallel run sums its gradients through, and what the nodes of a job
//! spanning processes check they share.

use std::collections::BTreeMap;

use std::sync::Arc;

use candle_core::Device;
use dmlp_datasets::loader::RowFilter;
use dmlp_train::{ClusterSpec, Collective, LocalCollective, StepContext, TrainConfig, draw_mixup, shards};

use crate::{ExperimentError, LoaderSource, Provenance, RunConfig, flatten};

/// Config keys each node may set for itself: where its data and cache lie, its loader threads,
/// how often it reads the loss back, where its pretrained weights come from (node 0's are
/// broadcast).
const PER_NODE_KEYS: [&str; 6] =
    ["data.root", "data.workers", "data.cache_dir", "train.eval_batch_size", "train.sync_every", "model.pretrained"];

/// What every node of a job must share, as `key = value` lines: the config (per-node keys
/// aside), the training split (images and a fingerprint of its records: ids, files relative to
/// the root, labels, metadata) and the build.
pub(crate) fn job_description(config: &RunConfig, train: &dmlp_datasets::Split, provenance: &Provenance) -> String {
    let mut keys = BTreeMap::new();
    if let Ok(table) = toml::Table::try_from(config) {
        flatten("", &table, &mut keys);
    }
    keys.retain(|key, _| !PER_NODE_KEYS.contains(&key.as_str()));
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for record in &train.records {
        let file = record.path.strip_prefix(&config.data.root).unwrap_or(&record.path);
        let line = format!("{}\t{}\t{}\t{:?}\n", record.image_id, file.display(), record.label, record.observation);
        for byte in line.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    keys.insert("split.train.images".into(), train.records.len().to_string());
    keys.insert("split.train.records_fnv1a64".into(), format!("{hash:016x}"));
    keys.insert("build.version".into(), env!("CARGO_PKG_VERSION").into());
    keys.insert("build.git_commit".into(), provenance.git_commit.clone().unwrap_or_else(|| "unknown".into()));
    keys.into_iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
}

/// This process's ranks of a job spanning processes: NCCL between CUDA devices when every node
/// can (built with `nccl`, all its devices CUDA), node 0's hub summing over TCP otherwise.
pub(crate) fn cluster_collectives(
    devices: &[Device],
    cluster: &ClusterSpec,
    job: &str,
) -> Result<(Vec<Box<dyn Collective>>, String), ExperimentError> {
    check_distinct_gpus(devices)?;
    #[cfg(feature = "nccl")]
    let nccl: Option<dmlp_train::NcclIdMaker> =
        devices.iter().all(Device::is_cuda).then_some(dmlp_train::nccl_unique_id as dmlp_train::NcclIdMaker);
    #[cfg(not(feature = "nccl"))]
    let nccl: Option<dmlp_train::NcclIdMaker> = None;
    let member = dmlp_train::join(cluster, devices.len(), job, nccl)?;
    let ranks = format!(
        "node {} of {}, ranks {}..{} of {}",
        cluster.node_rank,
        cluster.nodes,
        member.first_rank,
        member.first_rank + member.local_ranks,
        member.world
    );
    #[cfg(feature = "nccl")]
    if let Some(id) = &member.nccl_id {
        let group = dmlp_train::NcclCollective::group_of_ranks(devices, member.first_rank, member.world, id)?;
        return Ok((
            group.into_iter().map(|c| Box::new(c) as Box<dyn Collective>).collect(),
            format!("{ranks}: gradients summed by NCCL"),
        ));
    }
    let group = member.host_collectives()?;
    Ok((
        group.into_iter().map(|c| Box::new(c) as Box<dyn Collective>).collect(),
        format!("{ranks}: gradients summed by node 0 over TCP ({})", cluster.address),
    ))
}

pub(crate) fn check_distinct_gpus(devices: &[Device]) -> Result<(), ExperimentError> {
    let mut seen = Vec::new();
    for device in devices.iter().filter(|d| d.is_cuda()) {
        let id = format!("{:?}", device.location());
        if seen.contains(&id) {
            return Err(ExperimentError::Config {
                path: "--devices".into(),
                message: format!("a CUDA device is named twice ({id}): one replica per GPU"),
            });
        }
        seen.push(id);
    }
    Ok(())
}

/// One collective per device (rank order) and a line saying how gradients are summed: NCCL
/// between CUDA devices when built with the `nccl` feature, on the host otherwise (the CPU, or
/// CUDA without NCCL: correct, with one copy to the host and back per step).
pub(crate) fn collectives(devices: &[Device]) -> Result<(Vec<Box<dyn Collective>>, String), ExperimentError> {
    let all_cuda = devices.iter().all(Device::is_cuda);
    check_distinct_gpus(devices)?;
    #[cfg(feature = "nccl")]
    if all_cuda {
        let group = dmlp_train::NcclCollective::group(devices)?;
        return Ok((
            group.into_iter().map(|c| Box::new(c) as Box<dyn Collective>).collect(),
            format!("{} devices, gradients summed by NCCL", devices.len()),
        ));
    }
    let how = if all_cuda {
        format!("{} devices, gradients summed on the host (built without the `nccl` feature)", devices.len())
    } else {
        format!("{} devices, gradients summed on the host", devices.len())
    };
    let group = LocalCollective::group(devices.len());
    Ok((group.into_iter().map(|c| Box::new(c) as Box<dyn Collective>).collect(), how))
}

/// The rows of a batch of `n` that ranks `ranks` of `world` read: their shards and, under mixup
/// or CutMix, those rows' partners (the step's draw, made here as the trainer makes it).
fn rows_read(
    train: &TrainConfig,
    (first, count): (usize, usize),
    world: usize,
    size: usize,
    epoch: usize,
    batch: usize,
    n: usize,
) -> Vec<bool> {
    let all = shards(n, world);
    let start = all[first].0;
    let end = all[first + count - 1].0 + all[first + count - 1].1;
    let mut wanted = vec![false; n];
    wanted[start..end].iter_mut().for_each(|w| *w = true);
    match draw_mixup(train, n, (size, size), &StepContext { epoch, iteration: batch, lr: 0.0 }) {
        Ok(draw) => draw.perm[start..end].iter().for_each(|&p| wanted[p as usize] = true),
        // The trainer will fail on the same draw; decode everything meanwhile.
        Err(_) => wanted.iter_mut().for_each(|w| *w = true),
    }
    wanted
}

/// Lets this node decode only the rows its ranks read ([`rows_read`]) when its collectives span
/// processes; a line saying what it decodes.
pub(crate) fn decode_own_rows(
    source: &mut LoaderSource,
    train: &TrainConfig,
    collectives: &[Box<dyn Collective>],
) -> String {
    let (Some(first), count) = (collectives.first(), collectives.len()) else { return String::new() };
    let (first, world) = (first.rank(), first.world_size());
    let (train, size) = (train.clone(), source.view_size());
    let filter =
        RowFilter(Arc::new(move |epoch, batch, n| rows_read(&train, (first, count), world, size, epoch, batch, n)));
    if source.set_row_filter(filter) {
        "this node decodes its ranks' rows of each batch and their mixup partners".into()
    } else {
        "this node decodes every row of each batch (bad_images = \"skip\" moves rows)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_reads_its_shards_and_their_partners_only() {
        let plain = TrainConfig { mixup_alpha: 0.0, cutmix_alpha: 0.0, ..TrainConfig::recipe(1, 8, 0.1) };
        // 8 rows over 4 ranks; this node holds ranks 2 and 3: rows 4..8.
        let wanted = rows_read(&plain, (2, 2), 4, 16, 1, 0, 8);
        assert_eq!(wanted, [false, false, false, false, true, true, true, true]);
        let mixed = TrainConfig { mixup_alpha: 0.4, ..plain };
        let draw = draw_mixup(&mixed, 8, (16, 16), &StepContext { epoch: 3, iteration: 5, lr: 0.0 }).unwrap();
        let wanted = rows_read(&mixed, (2, 2), 4, 16, 3, 5, 8);
        for (row, &wanted) in wanted.iter().enumerate() {
            let needed = row >= 4 || draw.perm[4..].contains(&(row as u32));
            assert_eq!(wanted, needed, "row {row} (perm {:?})", draw.perm);
        }
    }
}
