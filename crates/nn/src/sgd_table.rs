//! The address table of the one-launch SGD update (`dmlp_sgd_many_f32` in `cuda/kernels.cu`),
//! built on the host: plain arithmetic on addresses and lengths, so it is tested on the CPU
//! against a replay of how the kernel reads it.

/// Bytes per f32 element.
const F32_BYTES: u64 = 4;

/// The table `dmlp_sgd_many_f32` reads: per parameter `t`, words `4t..4t + 4` are the addresses
/// of the parameter, its gradient and its momentum buffer and its length; then per block two
/// words, the parameter it updates and its first element, each block `chunk` elements (the last
/// of a parameter fewer; an empty parameter none). Returns the table and the number of blocks, or
/// `None` when a written range (a parameter or a buffer) overlaps another range.
///
/// `parameters`: `([param, grad, buffer] addresses, length)` each, f32 elements.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn sgd_table(parameters: &[([u64; 3], usize)], chunk: usize) -> Option<(Vec<u64>, usize)> {
    let mut ranges = Vec::with_capacity(3 * parameters.len());
    let mut table = Vec::with_capacity(4 * parameters.len());
    for &(addresses, len) in parameters {
        let bytes = len as u64 * F32_BYTES;
        for (part, address) in addresses.into_iter().enumerate() {
            // Parameters (0) and buffers (2) are written, gradients (1) read.
            ranges.push((address, address + bytes, part != 1));
        }
        table.extend(addresses);
        table.push(len as u64);
    }
    if writes_overlap(ranges) {
        return None;
    }
    let mut blocks = 0;
    for (index, &(_, len)) in parameters.iter().enumerate() {
        for first in (0..len).step_by(chunk.max(1)) {
            table.extend([index as u64, first as u64]);
            blocks += 1;
        }
    }
    Some((table, blocks))
}

/// Whether a written byte range `(start, end, written)` overlaps any other range (two read
/// ranges may overlap: gradients can share storage).
fn writes_overlap(mut ranges: Vec<(u64, u64, bool)>) -> bool {
    ranges.retain(|(start, end, _)| end > start);
    ranges.sort_unstable_by_key(|&(start, _, _)| start);
    let (mut any_end, mut written_end) = (0, 0);
    for (start, end, written) in ranges {
        if start < written_end || (written && start < any_end) {
            return true;
        }
        any_end = any_end.max(end);
        if written {
            written_end = written_end.max(end);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::{sgd_table, writes_overlap};

    #[test]
    fn a_written_range_may_overlap_nothing_but_read_ranges_may_share() {
        // Two gradients sharing storage (read) beside a parameter and a buffer (written).
        assert!(!writes_overlap(vec![(0, 40, false), (0, 40, false), (40, 80, true), (80, 120, true)]));
        // A buffer written over a gradient, in either order of the starts.
        assert!(writes_overlap(vec![(0, 40, false), (20, 60, true)]));
        assert!(writes_overlap(vec![(20, 60, false), (0, 40, true)]));
        // Two writes into one allocation, one inside the other, and the same range twice.
        assert!(writes_overlap(vec![(0, 100, true), (200, 300, false), (10, 20, true)]));
        assert!(writes_overlap(vec![(8, 16, true), (8, 16, true)]));
        // Touching is not overlapping; an empty range overlaps nothing.
        assert!(!writes_overlap(vec![(0, 8, true), (8, 16, true), (4, 4, true)]));
    }

    /// Replays `dmlp_sgd_many_f32`'s reads of the table: every element of every parameter is
    /// updated by exactly one block, with the parameter's own three addresses.
    #[test]
    fn every_element_is_updated_once_by_the_block_the_kernel_reads() {
        let lens = [35usize, 13, 41_000, 0, 16_384, 16_385];
        // Parameters, gradients and buffers in three separate regions, 1 MiB apart.
        let parameters: Vec<([u64; 3], usize)> = lens
            .iter()
            .enumerate()
            .map(|(t, &len)| {
                ([(1 << 20) * t as u64, (1 << 30) + (1 << 20) * t as u64, (2 << 30) + (1 << 20) * t as u64], len)
            })
            .collect();
        let chunk = 16 * 1024;
        let (table, blocks) = sgd_table(&parameters, chunk).unwrap();
        let tensors = lens.len();
        assert_eq!(table.len(), 4 * tensors + 2 * blocks);
        let mut updated: Vec<Vec<u32>> = lens.iter().map(|&len| vec![0; len]).collect();
        for block in 0..blocks {
            // As the kernel: its pair after the per-parameter words, then that parameter's words.
            let pair = &table[4 * tensors + 2 * block..][..2];
            let entry = &table[4 * pair[0] as usize..][..4];
            let t = pair[0] as usize;
            assert_eq!(entry[..3], parameters[t].0, "block {block}");
            let (first, end) = (pair[1] as usize, (entry[3] as usize).min(pair[1] as usize + chunk));
            for count in &mut updated[t][first..end] {
                *count += 1;
            }
        }
        for (t, counts) in updated.iter().enumerate() {
            assert!(counts.iter().all(|&c| c == 1), "parameter {t}: every element once");
        }
        // 35, 13: one block each; 41 000: three; 0: none; 16 384: one; 16 385: two.
        assert_eq!(blocks, 8);
    }

    #[test]
    fn a_buffer_sharing_a_parameters_memory_takes_no_table() {
        // The second parameter's buffer starts inside the first parameter (10 f32 = 40 bytes).
        let parameters = [([0u64, 1000, 2000], 10), ([100, 1100, 20], 10)];
        assert!(sgd_table(&parameters, 16).is_none());
        // Gradients may share memory (both sides of an addition get one gradient).
        let parameters = [([0u64, 1000, 2000], 10), ([100, 1000, 2100], 10)];
        assert!(sgd_table(&parameters, 16).is_some());
    }
}
