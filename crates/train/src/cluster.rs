//! Data parallelism across processes (several nodes, or several processes on one): a rendezvous
//! at one address, and a [`Collective`] that sums over TCP.
//!
//! Every process calls [`join`] with the same [`ClusterSpec`] but its own `node_rank`. Node 0
//! listens at the address and runs the *hub*, a thread that first gathers every node's hello
//! (its number of devices and a description of its job), checks that the jobs agree (the same
//! config, the same data; a difference is an error naming the keys), gives each node its first
//! global rank (node 0's devices are ranks `0..k`, node 1's the next, …), and hands out NCCL's
//! unique id when every node can use NCCL. Then the ranks either sum through NCCL (the id is all
//! they needed) or connect to the hub once each ([`Membership::host_collectives`]): the hub reads
//! one contribution from every rank, sums them **in rank order** (so the sum is bit for bit the
//! one [`LocalCollective`](crate::LocalCollective) computes for the same ranks in one process)
//! and sends it back to each.
//!
//! A rank whose process ends or fails closes its connection; the hub then tells every other
//! rank waiting on a sum, which fails its step naming the rank. (Under NCCL a node that dies
//! leaves the others waiting inside NCCL, as PyTorch without its watchdog does: stop them.)
//!
//! Nothing here is encrypted or authenticated: run it on a trusted network, as NCCL itself is.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::parallel::Collective;

/// How a process finds the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// Processes in the job (one per node, each with one or more devices).
    pub nodes: usize,
    /// This process's place, `0..nodes`; node 0 hosts the rendezvous, evaluates and writes the
    /// run folder.
    pub node_rank: usize,
    /// `host:port` node 0 listens on and the others connect to.
    pub address: String,
    /// How long to wait for every node to join.
    pub timeout: Duration,
}

impl ClusterSpec {
    /// The default wait for every node to join.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

    pub fn validate(&self) -> Result<(), TrainError> {
        if self.nodes < 2 {
            return Err(TrainError::Config(format!("a cluster has at least 2 nodes, not {}", self.nodes)));
        }
        if self.node_rank >= self.nodes {
            return Err(TrainError::Config(format!(
                "node rank {} of {} nodes (0..{})",
                self.node_rank, self.nodes, self.nodes
            )));
        }
        if self.address.to_socket_addrs().map(|mut a| a.next().is_none()).unwrap_or(true) {
            return Err(TrainError::Config(format!("rendezvous address `{}`: not host:port", self.address)));
        }
        Ok(())
    }
}

/// What node 0's hub gave this process.
#[derive(Debug, Clone)]
pub struct Membership {
    /// The global rank of this process's first device.
    pub first_rank: usize,
    /// Devices over all nodes.
    pub world: usize,
    /// This process's devices.
    pub local_ranks: usize,
    /// NCCL's unique id (128 bytes) when every node sums through NCCL; `None`: sums on the hub.
    pub nccl_id: Option<Vec<u8>>,
    address: SocketAddr,
    deadline: Instant,
}

/// Makes NCCL's unique id (node 0, when built with NCCL and training on CUDA devices).
pub type NcclIdMaker = fn() -> Result<Vec<u8>, String>;

#[derive(Debug, Serialize, Deserialize)]
enum Control {
    NodeHello { node_rank: usize, nodes: usize, local_ranks: usize, job: String, nccl: bool },
    Welcome { first_rank: usize, world: usize, nccl_id: Option<Vec<u8>> },
    Refused { reason: String },
    RankHello { rank: usize },
}

/// Joins the job: node 0 starts the hub first. `job` describes what this process will train as
/// `key = value` lines (every node's must equal node 0's); `nccl` is `Some` where this process
/// can sum through NCCL (node 0's makes the id).
pub fn join(
    spec: &ClusterSpec,
    local_ranks: usize,
    job: &str,
    nccl: Option<NcclIdMaker>,
) -> Result<Membership, TrainError> {
    spec.validate()?;
    if local_ranks == 0 {
        return Err(TrainError::Config("a node needs at least one device".into()));
    }
    let deadline = Instant::now() + spec.timeout;
    let address = spec
        .address
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| TrainError::Config(format!("rendezvous address `{}`: not host:port", spec.address)))?;
    let address = if spec.node_rank == 0 {
        let listener = TcpListener::bind(address)
            .map_err(|e| TrainError::Parallel(format!("node 0 cannot listen on {address}: {e}")))?;
        let bound = listener.local_addr().map_err(|e| TrainError::Parallel(format!("{address}: {e}")))?;
        let nodes = spec.nodes;
        std::thread::Builder::new()
            .name("dmlp-hub".into())
            .spawn(move || hub(listener, nodes, deadline, nccl))
            .map_err(|e| TrainError::Parallel(format!("cannot start the hub: {e}")))?;
        // Connect to where it listens (a wildcard address is reached through the loopback).
        if bound.ip().is_unspecified() { SocketAddr::new([127, 0, 0, 1].into(), bound.port()) } else { bound }
    } else {
        address
    };
    let mut stream = connect(address, deadline)?;
    let hello = Control::NodeHello {
        node_rank: spec.node_rank,
        nodes: spec.nodes,
        local_ranks,
        job: job.into(),
        nccl: nccl.is_some(),
    };
    send_control(&mut stream, &hello).map_err(|e| lost(address, &e))?;
    // Node 0's hub answers once every node has said hello (or the wait is over).
    stream.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(30))).ok();
    match read_control(&mut stream).map_err(|e| lost(address, &e))? {
        Control::Welcome { first_rank, world, nccl_id } => {
            Ok(Membership { first_rank, world, local_ranks, nccl_id, address, deadline })
        }
        Control::Refused { reason } => {
            Err(TrainError::Parallel(format!("the rendezvous at {address} refused: {reason}")))
        }
        other => Err(TrainError::Parallel(format!("the rendezvous at {address} answered {other:?}"))),
    }
}

impl Membership {
    /// This process's ranks, each connected to the hub, which sums their contributions with
    /// every other process's (when the job does not sum through NCCL).
    pub fn host_collectives(&self) -> Result<Vec<HubCollective>, TrainError> {
        if self.nccl_id.is_some() {
            return Err(TrainError::Parallel("this job sums through NCCL, not the hub".into()));
        }
        (self.first_rank..self.first_rank + self.local_ranks)
            .map(|rank| {
                let mut stream = connect(self.address, self.deadline)?;
                send_control(&mut stream, &Control::RankHello { rank }).map_err(|e| lost(self.address, &e))?;
                Ok(HubCollective { rank, world: self.world, stream })
            })
            .collect()
    }
}

fn lost(address: SocketAddr, error: &io::Error) -> TrainError {
    TrainError::Parallel(format!("the rendezvous at {address}: {error}"))
}

/// Connects to `address`, retrying until `deadline` (node 0 may not listen yet).
fn connect(address: SocketAddr, deadline: Instant) -> Result<TcpStream, TrainError> {
    loop {
        match TcpStream::connect_timeout(&address, Duration::from_secs(5)) {
            Ok(stream) => {
                stream.set_nodelay(true).ok();
                return Ok(stream);
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(TrainError::Parallel(format!("no rendezvous at {address} (is node 0 running?): {e}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The most devices a node may bring (a hello claiming more is not from a node of this job).
const MAX_DEVICES_PER_NODE: usize = 1024;

/// Frames larger than this are refused (a stray connection, not a gradient).
const MAX_FRAME: u64 = 1 << 38;

fn write_frame(stream: &mut TcpStream, parts: &[&[u8]]) -> io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    stream.write_all(&(len as u64).to_le_bytes())?;
    for part in parts {
        stream.write_all(part)?;
    }
    stream.flush()
}

fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    stream.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload)?;
    Ok(payload)
}

fn send_control(stream: &mut TcpStream, message: &Control) -> io::Result<()> {
    let bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
    write_frame(stream, &[&bytes])
}

fn read_control(stream: &mut TcpStream) -> io::Result<Control> {
    let frame = read_frame(stream)?;
    serde_json::from_slice(&frame).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Waits for a connection until `deadline`.
fn accept(listener: &TcpListener, deadline: Instant) -> Option<TcpStream> {
    listener.set_nonblocking(true).ok()?;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).ok()?;
                stream.set_nodelay(true).ok();
                stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
                return Some(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => return None,
        }
    }
}

/// The lines of `job` whose key differs from `reference`'s, as `key: a → b`.
fn job_differences(reference: &str, job: &str) -> Vec<String> {
    let parse = |text: &str| -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|line| line.split_once(" = "))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect()
    };
    let (a, b) = (parse(reference), parse(job));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(absent)".into());
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} → {}", show(a.get(k)), show(b.get(k))))
        .collect()
}

/// Node 0's hub: the rendezvous, then (unless NCCL sums) the sums.
fn hub(listener: TcpListener, nodes: usize, deadline: Instant, nccl: Option<NcclIdMaker>) {
    let mut joined: Vec<(TcpStream, usize, usize, String, bool)> = Vec::new();
    let mut refusal = None;
    while joined.len() < nodes {
        let Some(mut stream) = accept(&listener, deadline) else {
            refusal = Some(format!(
                "{} of {nodes} nodes joined in time (nodes {:?}); start every node with the same --nodes and --rendezvous",
                joined.len(),
                joined.iter().map(|j| j.1).collect::<Vec<_>>()
            ));
            break;
        };
        // A connection that does not say hello (a port scanner, a stray client) is dropped.
        if let Ok(Control::NodeHello { node_rank, nodes: theirs, local_ranks, job, nccl }) = read_control(&mut stream) {
            if theirs != nodes {
                refusal = Some(format!("node {node_rank} was started with --nodes {theirs}, node 0 with {nodes}"));
            } else if !(1..=MAX_DEVICES_PER_NODE).contains(&local_ranks) {
                refusal = Some(format!("node {node_rank} has {local_ranks} devices (1 to {MAX_DEVICES_PER_NODE})"));
            } else if node_rank >= nodes || joined.iter().any(|j| j.1 == node_rank) {
                refusal = Some(format!("node rank {node_rank} joined twice or is not in 0..{nodes}"));
            }
            joined.push((stream, node_rank, local_ranks, job, nccl));
            if refusal.is_some() {
                break;
            }
        }
    }
    joined.sort_by_key(|j| j.1);
    if refusal.is_none() {
        let differing: Vec<String> = joined[1..]
            .iter()
            .filter_map(|(_, rank, _, job, _)| {
                let differences = job_differences(&joined[0].3, job);
                (!differences.is_empty())
                    .then(|| format!("node {rank} differs from node 0: {}", differences.join("; ")))
            })
            .collect();
        if !differing.is_empty() {
            refusal = Some(differing.join(". "));
        }
    }
    let nccl_id = match (refusal.is_none() && joined.iter().all(|j| j.4), nccl) {
        (true, Some(make)) => match make() {
            Ok(id) => Some(id),
            Err(e) => {
                refusal = Some(format!("NCCL's unique id: {e}"));
                None
            }
        },
        _ => None,
    };
    if let Some(reason) = refusal {
        for (stream, ..) in &mut joined {
            send_control(stream, &Control::Refused { reason: reason.clone() }).ok();
        }
        return;
    }
    let world: usize = joined.iter().map(|j| j.2).sum();
    let mut first_rank = 0;
    for (stream, _, local_ranks, ..) in &mut joined {
        send_control(stream, &Control::Welcome { first_rank, world, nccl_id: nccl_id.clone() }).ok();
        first_rank += *local_ranks;
    }
    if nccl_id.is_some() {
        return;
    }
    let mut ranks: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
    while ranks.iter().any(Option::is_none) {
        let Some(mut stream) = accept(&listener, deadline) else { return };
        if let Ok(Control::RankHello { rank }) = read_control(&mut stream)
            && rank < world
            && ranks[rank].is_none()
        {
            // Steps (and node 0's evaluation between epochs) take as long as they take.
            stream.set_read_timeout(None).ok();
            ranks[rank] = Some(stream);
        }
    }
    let mut ranks: Vec<TcpStream> = ranks.into_iter().flatten().collect();
    sum_rounds(&mut ranks);
}

/// A sum message: `[u64 header length][header: u32 tensors, then per tensor u32 rank and u64
/// dims][f32 values, little-endian]`. A reply: `[u8 0][f32 values]`, or `[u8 1][utf-8 reason]`.
fn sum_rounds(ranks: &mut [TcpStream]) {
    loop {
        let frames: Vec<io::Result<Vec<u8>>> = ranks.iter_mut().map(read_frame).collect();
        if frames.iter().all(Result::is_err) {
            return; // every rank is done
        }
        let fail = |ranks: &mut [TcpStream], frames: &[io::Result<Vec<u8>>], reason: &str| {
            for (stream, frame) in ranks.iter_mut().zip(frames) {
                if frame.is_ok() {
                    write_frame(stream, &[&[1], reason.as_bytes()]).ok();
                }
            }
        };
        if let Some(rank) = frames.iter().position(Result::is_err) {
            fail(ranks, &frames, &format!("rank {rank}'s connection closed (its process ended or failed)"));
            return;
        }
        let frames: Vec<Vec<u8>> = frames.into_iter().flatten().collect();
        let split = |frame: &[u8]| -> Option<(usize, usize)> {
            let header = u64::from_le_bytes(frame.get(..8)?.try_into().ok()?) as usize;
            let values = frame.len().checked_sub(8 + header)?;
            (values % 4 == 0).then_some((header, values / 4))
        };
        let Some((header, len)) = split(&frames[0]) else {
            fail(ranks, &frames.into_iter().map(Ok).collect::<Vec<_>>(), "rank 0 sent a malformed sum");
            return;
        };
        if let Some(rank) =
            frames.iter().position(|f| split(f) != Some((header, len)) || f[..8 + header] != frames[0][..8 + header])
        {
            let reason = format!("rank {rank} sent tensors of other shapes than rank 0");
            fail(ranks, &frames.into_iter().map(Ok).collect::<Vec<_>>(), &reason);
            return;
        }
        let mut sum: Vec<f32> = f32s(&frames[0][8 + header..]);
        for frame in &frames[1..] {
            for (acc, b) in sum.iter_mut().zip(frame[8 + header..].chunks_exact(4)) {
                *acc += f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        let bytes: Vec<u8> = sum.iter().flat_map(|v| v.to_le_bytes()).collect();
        for stream in ranks.iter_mut() {
            if write_frame(stream, &[&[0], &bytes]).is_err() {
                return; // the rank's next read of the hub fails too
            }
        }
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// One rank of a job spanning processes, summing through node 0's hub.
#[derive(Debug)]
pub struct HubCollective {
    rank: usize,
    world: usize,
    stream: TcpStream,
}

impl Collective for HubCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<Vec<Tensor>, TrainError> {
        let device = tensors.first().map_or(Device::Cpu, |t| t.device().clone());
        let mut header = (tensors.len() as u32).to_le_bytes().to_vec();
        let mut values = Vec::with_capacity(4 * tensors.iter().map(Tensor::elem_count).sum::<usize>());
        for tensor in tensors {
            header.extend((tensor.rank() as u32).to_le_bytes());
            for &dim in tensor.dims() {
                header.extend((dim as u64).to_le_bytes());
            }
            let host = tensor.to_dtype(DType::F32)?.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
            values.extend(host.iter().flat_map(|v| v.to_le_bytes()));
        }
        let rank = self.rank;
        let broken = |e: io::Error| TrainError::Parallel(format!("rank {rank}: the hub's connection: {e}"));
        write_frame(&mut self.stream, &[&(header.len() as u64).to_le_bytes(), &header, &values]).map_err(broken)?;
        let reply = read_frame(&mut self.stream).map_err(broken)?;
        match reply.split_first() {
            Some((0, sum)) if sum.len() == values.len() => {
                let sum = f32s(sum);
                let mut out = Vec::with_capacity(tensors.len());
                let mut start = 0;
                for tensor in tensors {
                    let len = tensor.elem_count();
                    out.push(Tensor::from_slice(&sum[start..start + len], tensor.dims(), &device)?);
                    start += len;
                }
                Ok(out)
            }
            Some((1, reason)) => Err(TrainError::Parallel(format!("rank {rank}: {}", String::from_utf8_lossy(reason)))),
            _ => Err(TrainError::Parallel(format!("rank {rank}: the hub sent a malformed sum"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A free loopback port (bound, read and released: the tests' nodes bind it again).
    fn free_address() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    fn spec(address: &str, nodes: usize, node_rank: usize) -> ClusterSpec {
        ClusterSpec { nodes, node_rank, address: address.into(), timeout: Duration::from_secs(20) }
    }

    #[test]
    fn nodes_get_consecutive_ranks_and_sum_in_rank_order() {
        let address = free_address();
        // Node 0 with one rank, node 1 with two: ranks 0 | 1, 2.
        let sums: Vec<Vec<Vec<f32>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = [(0, 1), (1, 2)]
                .into_iter()
                .map(|(node, local)| {
                    let address = &address;
                    scope.spawn(move || {
                        let member = join(&spec(address, 2, node), local, "train.lr = 0.1\n", None).unwrap();
                        assert_eq!(member.world, 3);
                        assert_eq!(member.first_rank, node);
                        let collectives = member.host_collectives().unwrap();
                        std::thread::scope(|inner| {
                            let handles: Vec<_> = collectives
                                .into_iter()
                                .map(|mut c| {
                                    inner.spawn(move || {
                                        let r = c.rank() as f32;
                                        let order_sensitive = [1.0f32, 1e8, -1e8][c.rank()];
                                        let a = Tensor::new(&[r, order_sensitive], &Device::Cpu).unwrap();
                                        let b = Tensor::new(&[[1f32], [0.1 * r]], &Device::Cpu).unwrap();
                                        let out = c.all_reduce_sum(&[a, b]).unwrap();
                                        assert_eq!(out[1].dims(), [2, 1]);
                                        out.iter()
                                            .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                                            .collect()
                                    })
                                })
                                .collect();
                            handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<Vec<f32>>>()
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // In rank order (1 + 1e8) − 1e8 = 0 in f32 (from the last rank first it would be 1);
        // 0 + 0.1 + 0.2 as f32 sums it.
        let expected = vec![3.0, 0.0, 3.0, 0.0f32 + 0.1 + 0.2];
        for node in sums {
            for rank in node {
                assert_eq!(rank, expected);
            }
        }
    }

    #[test]
    fn a_node_with_another_config_is_refused_naming_the_key() {
        let address = free_address();
        let errors: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> =
                [(0, "train.lr = 0.1\ndata.image_size = 224"), (1, "train.lr = 0.2\ndata.image_size = 224")]
                    .into_iter()
                    .map(|(node, job)| {
                        let address = &address;
                        scope.spawn(move || join(&spec(address, 2, node), 1, job, None).unwrap_err().to_string())
                    })
                    .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for error in errors {
            assert!(error.contains("node 1 differs from node 0: train.lr: 0.1 → 0.2"), "{error}");
        }
    }

    #[test]
    fn a_missing_node_is_an_error_once_the_wait_is_over() {
        let address = free_address();
        let spec = ClusterSpec { timeout: Duration::from_millis(300), ..spec(&address, 2, 0) };
        let error = join(&spec, 1, "", None).unwrap_err().to_string();
        assert!(error.contains("1 of 2 nodes joined"), "{error}");
    }

    #[test]
    fn a_rank_that_leaves_fails_the_others_sums() {
        let address = free_address();
        let errors: Vec<Option<String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = [0, 1]
                .into_iter()
                .map(|node| {
                    let address = &address;
                    scope.spawn(move || {
                        let member = join(&spec(address, 2, node), 1, "", None).unwrap();
                        let mut collective = member.host_collectives().unwrap().pop().unwrap();
                        if node == 1 {
                            drop(collective); // its process ends
                            return None;
                        }
                        let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
                        Some(collective.all_reduce_sum(&[t]).unwrap_err().to_string())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let error = errors[0].as_ref().unwrap();
        assert!(error.contains("rank 1's connection closed"), "{error}");
    }

    #[test]
    fn bad_specs_are_errors() {
        assert!(ClusterSpec { nodes: 1, ..spec("127.0.0.1:1", 1, 0) }.validate().is_err());
        assert!(spec("127.0.0.1:1", 2, 2).validate().is_err());
        assert!(spec("no port", 2, 1).validate().is_err());
    }
}
