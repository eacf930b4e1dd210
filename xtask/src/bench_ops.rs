//! `cargo xtask bench ops`: the training ops on their own. conv2d forward + backward GFLOP/s
//! over ResNet-50's (or SK-Res2Net-101's, `--convs sk2res2net101`) convolutions at batch 8 × 224²,
//! shape by shape, BatchNorm's training pass, memory-bound elementwise ops (GB/s), the ResNet-50
//! step, and a tiny ResNet's step, each beside PyTorch's when a Python with PyTorch is given (the
//! elementwise ops without a peer).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use dmlp_backbones::{BackbonePreset, BackboneSpec, BlockKind, CustomBackbone};
use dmlp_model::{Classifier, ModelConfig};
use dmlp_nn::{Conv2dConfig, ParamStore, batch_norm, conv2d_forward, gelu};

#[derive(Debug, clap::Args)]
pub(crate) struct OpsBenchArgs {
    /// A Python interpreter with PyTorch: runs the same work in PyTorch in the same run.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Threads on both sides (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed iterations of each whole-network step (median reported, after one warm-up).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Print one JSON object as the last line of standard output (logs go to standard error).
    #[arg(long)]
    json: bool,
    /// cpu or cuda:N (the device is synchronised inside every timer; `--python` compares on
    /// the CPU only: on a GPU, `cargo xtask gpu-check` runs PyTorch beside dmlp).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Whose convolutions the conv2d figure runs over (both sides).
    #[arg(long, value_enum, default_value_t = ConvSet::Resnet50)]
    convs: ConvSet,
    /// Timed runs of each convolution shape, the median reported (both sides; 21 for the
    /// tiny shapes of the SK layer's pooled inputs when fewer). More steadies a comparison of
    /// two builds on a shared machine.
    #[arg(long, default_value_t = 3)]
    shape_iters: usize,
}

/// The networks whose convolution shapes `bench ops` can time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ConvSet {
    Resnet50,
    Sk2res2net101,
}

impl ConvSet {
    fn name(self) -> &'static str {
        match self {
            Self::Resnet50 => "resnet50",
            Self::Sk2res2net101 => "sk2res2net101",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::Resnet50 => "ResNet-50",
            Self::Sk2res2net101 => "SK-Res2Net-101",
        }
    }

    fn shapes(self) -> Vec<ConvShape> {
        match self {
            Self::Resnet50 => resnet50_convs(),
            Self::Sk2res2net101 => sk2res2net101_convs(),
        }
    }
}

/// One convolution shape: `(in, out, kernel, stride, padding, input size, how many)`.
type ConvShape = (usize, usize, usize, usize, usize, usize, usize);

/// ResNet-50's convolutions at 224² (torchvision layout), grouped by shape.
pub(crate) fn resnet50_convs() -> Vec<ConvShape> {
    let mut convs = vec![(3, 64, 7, 2, 3, 224, 1)];
    let mut in_c = 64;
    let mut size = 56;
    for (stage, blocks) in [3usize, 4, 6, 3].into_iter().enumerate() {
        let planes = 64 << stage;
        let stride = if stage == 0 { 1 } else { 2 };
        let out_size = size / stride;
        // First block: 1×1 at the input size, 3×3 with the stride, 1×1, and the downsample.
        convs.push((in_c, planes, 1, 1, 0, size, 1));
        convs.push((planes, planes, 3, stride, 1, size, 1));
        convs.push((planes, planes * 4, 1, 1, 0, out_size, 1));
        convs.push((in_c, planes * 4, 1, stride, 0, size, 1));
        // The other blocks.
        convs.push((planes * 4, planes, 1, 1, 0, out_size, blocks - 1));
        convs.push((planes, planes, 3, 1, 1, out_size, blocks - 1));
        convs.push((planes, planes * 4, 1, 1, 0, out_size, blocks - 1));
        in_c = planes * 4;
        size = out_size;
    }
    convs
}

/// SK-Res2Net-101's convolutions at 224² (`crates/backbones/src/sk2res2net.rs`, stages
/// `[3, 4, 23, 3]`), grouped by shape: the deep stem, then per stage the first block (1×1, three
/// 3×3 over a quarter of the width at the input resolution, the SK layer's two 1×1 on pooled
/// `[B, C, 1, 1]` inputs, 1×1 after the average pool, and the downsample's 1×1) and the others.
pub(crate) fn sk2res2net101_convs() -> Vec<ConvShape> {
    let mut convs = vec![(3, 32, 3, 2, 1, 224, 1), (32, 32, 3, 1, 1, 112, 1), (32, 64, 3, 1, 1, 112, 1)];
    let mut in_c = 64;
    let mut size = 56;
    for (stage, blocks) in [3usize, 4, 23, 3].into_iter().enumerate() {
        let planes = 64 << stage;
        let split = planes * 26 / 64;
        let width = split * 4;
        let hidden = (width / 4).max(32);
        let out_c = planes * 4;
        let out_size = if stage == 0 { size } else { size / 2 };
        convs.push((in_c, width, 1, 1, 0, size, 1));
        convs.push((split, split, 3, 1, 1, size, 3));
        convs.push((width, hidden, 1, 1, 0, 1, blocks));
        convs.push((hidden, width, 1, 1, 0, 1, blocks));
        convs.push((width, out_c, 1, 1, 0, out_size, 1));
        convs.push((in_c, out_c, 1, 1, 0, out_size, 1));
        convs.push((out_c, width, 1, 1, 0, out_size, blocks - 1));
        convs.push((split, split, 3, 1, 1, out_size, 3 * (blocks - 1)));
        convs.push((width, out_c, 1, 1, 0, out_size, blocks - 1));
        in_c = out_c;
        size = out_size;
    }
    convs
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Median of `iters` timed runs after one warm-up, `device` synchronised inside the timer.
fn time_it(iters: usize, device: &Device, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    device.synchronize()?;
    let mut times = Vec::new();
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        f()?;
        device.synchronize()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// Forward + both gradients of one convolution shape, batch 8: seconds of one, FLOPs of one.
struct ConvTiming {
    shape: ConvShape,
    seconds: f64,
    /// The forward alone.
    forward: f64,
    flops: f64,
}

/// Forward + both gradients of every convolution shape in `set`, batch 8.
fn conv_fwd_bwd(set: ConvSet, shape_iters: usize, device: &Device) -> anyhow::Result<Vec<ConvTiming>> {
    let batch = 8;
    let mut timings = Vec::new();
    for (cin, cout, k, s, p, size, count) in set.shapes() {
        if count == 0 {
            continue;
        }
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (batch, cin, size, size), device)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (cout, cin, k, k), device)?)?;
        let config = Conv2dConfig::new(s, p);
        let out_size = (size + 2 * p - k) / s + 1;
        let step_flops = 3.0 * 2.0 * (batch * cout * out_size * out_size * cin * k * k) as f64;
        // A median of several runs (this project's machines are shared and noisy), of at least
        // 21 for tiny shapes (the SK layer's pooled inputs).
        let iters = if step_flops < 1e8 { shape_iters.max(21) } else { shape_iters };
        let forward = time_it(iters, device, || {
            drop(conv2d_forward(x.as_tensor(), w.as_tensor(), config)?);
            Ok(())
        })?;
        let t = time_it(iters, device, || {
            let ys = conv2d_forward(x.as_tensor(), w.as_tensor(), config)?;
            drop(ys.sum_all()?.backward()?);
            Ok(())
        })?;
        timings.push(ConvTiming { shape: (cin, cout, k, s, p, size, count), seconds: t, forward, flops: step_flops });
    }
    Ok(timings)
}

/// Total seconds and GFLOP/s over every shape, each counted as often as the network has it.
fn conv_totals<'a>(timings: impl Iterator<Item = (&'a ConvShape, f64, f64)>) -> (f64, f64) {
    let (seconds, flops) = timings
        .fold((0.0, 0.0), |(s, f), (shape, seconds, flops)| (s + seconds * shape.6 as f64, f + flops * shape.6 as f64));
    (seconds, flops / seconds / 1e9)
}

/// BatchNorm training forward + backward over ResNet-50 layer1's activation shape.
fn batch_norm_step(device: &Device) -> anyhow::Result<f64> {
    let store = ParamStore::new(0);
    let bn = batch_norm(256, store.var_builder(DType::F32, device))?;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (8, 256, 56, 56), device)?)?;
    time_it(3, device, || {
        let ys = bn.forward_t(x.as_tensor(), true)?;
        drop(ys.sum_all()?.backward()?);
        Ok(())
    })
}

/// GELU (exact, erf) forward + backward over PVT-v2-b2's first-stage MLP hidden activation,
/// `[8, 3136, 512]` (its largest; the stage runs it three times a step), f32.
fn gelu_step(device: &Device) -> anyhow::Result<f64> {
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (8, 3136, 512), device)?)?;
    time_it(3, device, || {
        drop(gelu(x.as_tensor())?.sum_all()?.backward()?);
        Ok(())
    })
}

/// Memory-bound ops over one activation (`[64, 256, 56, 56]` on a GPU, `[8, 256, 56, 56]` on
/// the CPU, f32): achieved GB/s of bytes read and written, median of three. `zeros + add` is
/// what candle's backward does for every gradient edge (`GradStore::or_insert`).
fn elementwise(device: &Device) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let batch = if device.is_cpu() { 8 } else { 64 };
    let x = Tensor::randn(0f32, 1.0, (batch, 256, 56, 56), device)?;
    let y = Tensor::randn(0f32, 1.0, (batch, 256, 56, 56), device)?;
    let bytes = (x.elem_count() * 4) as f64;
    let xh = x.to_dtype(DType::BF16)?;
    type Case<'a> = (&'static str, f64, Box<dyn Fn() -> candle_core::Result<Tensor> + 'a>);
    let cases: [Case; 6] = [
        ("relu", 2.0, Box::new(|| x.relu())),
        ("add", 3.0, Box::new(|| &x + &y)),
        ("f32 → bf16", 1.5, Box::new(|| x.to_dtype(DType::BF16))),
        ("bf16 → f32", 1.5, Box::new(|| xh.to_dtype(DType::F32))),
        ("zeros + add", 4.0, Box::new(|| x.zeros_like()?.add(&y))),
        (
            "per-channel scale (broadcast_mul)",
            2.0,
            Box::new(|| x.broadcast_mul(&y.narrow(0, 0, 1)?.narrow(2, 0, 1)?.narrow(3, 0, 1)?)),
        ),
    ];
    let mut rates = Vec::new();
    for (name, passes, op) in cases {
        let t = time_it(3, device, || {
            drop(op()?);
            Ok(())
        })?;
        rates.push((name, passes * bytes / t / 1e9));
    }
    Ok(rates)
}

fn network_step(spec: BackboneSpec, batch: usize, size: usize, iters: usize, device: &Device) -> anyhow::Result<f64> {
    let config = ModelConfig::image_only(spec, 10);
    let model = Classifier::new(&config, 0, device)?;
    let images = Tensor::randn(0f32, 1.0, (batch, 3, size, size), device)?;
    let targets = Tensor::from_vec((0..batch as u32).map(|i| i % 10).collect(), batch, device)?;
    time_it(iters, device, || {
        let out = model.forward_t(&images, None, true)?;
        let loss = candle_nn::loss::cross_entropy(&out.logits, &targets)?;
        drop(loss.backward()?);
        Ok(())
    })
}

fn tiny_resnet() -> BackboneSpec {
    BackboneSpec::Custom(CustomBackbone::Resnet { block: BlockKind::Basic, layers: vec![1, 1, 1, 1], width: 16 })
}

#[derive(Debug, serde::Deserialize)]
struct TorchOps {
    torch_version: String,
    /// Seconds of forward + backward of each shape given, in order.
    conv_shape_s: Vec<f64>,
    /// Seconds of the forward alone of each shape.
    conv_shape_forward_s: Vec<f64>,
    batch_norm_step_s: f64,
    gelu_step_s: f64,
    resnet50_step_s: f64,
    tiny_resnet_step_s: f64,
}

pub(crate) fn run(args: &OpsBenchArgs) -> anyhow::Result<ExitCode> {
    let threads = crate::bench::set_threads(args.threads);
    let device = dmlp_model::parse_device(&args.device)?;
    if !device.is_cpu() && args.python.is_some() {
        anyhow::bail!(
            "--python compares on the CPU; on a GPU, `cargo xtask gpu-check --python PY` runs PyTorch beside dmlp"
        );
    }
    eprintln!("bench ops: {threads} threads, release build: {}", !cfg!(debug_assertions));
    let convs = conv_fwd_bwd(args.convs, args.shape_iters, &device)?;
    let (conv_s, conv_gflops) = conv_totals(convs.iter().map(|c| (&c.shape, c.seconds, c.flops)));
    let title = args.convs.title();
    eprintln!("dmlp conv2d fwd+bwd over {title}'s convolutions: {conv_s:.2} s, {conv_gflops:.1} GFLOP/s");
    let bn_s = batch_norm_step(&device)?;
    eprintln!("dmlp BatchNorm train fwd+bwd (8, 256, 56, 56): {:.1} ms", bn_s * 1e3);
    let gelu_s = gelu_step(&device)?;
    eprintln!("dmlp GELU fwd+bwd (8, 3136, 512): {:.1} ms", gelu_s * 1e3);
    for (name, rate) in elementwise(&device)? {
        eprintln!("dmlp {name} over one activation (f32): {rate:.0} GB/s");
    }
    let resnet_s = network_step(BackboneSpec::Preset(BackbonePreset::Resnet50), 8, 224, args.iters, &device)?;
    eprintln!("dmlp ResNet-50 step, batch 8 × 224²: {resnet_s:.2} s");
    let tiny_s = network_step(tiny_resnet(), 32, 32, args.iters.max(5), &device)?;
    eprintln!("dmlp tiny ResNet step (basic [1,1,1,1], width 16), batch 32 × 32²: {:.1} ms", tiny_s * 1e3);

    let shapes: Vec<ConvShape> = convs.iter().map(|c| c.shape).collect();
    let torch = args
        .python
        .as_deref()
        .map(|python| run_torch(python, threads, (args.iters, args.shape_iters), &shapes))
        .transpose()?;
    print_conv_shapes(&convs, torch.as_ref());
    println!("{:<52} {:>10} {:>10} {:>8}", "measure", "dmlp", "torch", "ratio");
    let row = |name: &str, ours: f64, theirs: Option<f64>, unit: &str| match theirs {
        Some(t) => println!("{name:<52} {ours:>8.3}{unit} {t:>8.3}{unit} {:>7.2}×", ours / t),
        None => println!("{name:<52} {ours:>8.3}{unit} {:>10} {:>8}", "-", "-"),
    };
    let torch_conv_gflops = torch.as_ref().map(|t| torch_conv_totals(&convs, t).1);
    row(&format!("conv2d fwd+bwd, {title} shapes, batch 8 (GFLOP/s)"), conv_gflops, torch_conv_gflops, "  ");
    row("BatchNorm train fwd+bwd (8,256,56,56)", bn_s, torch.as_ref().map(|t| t.batch_norm_step_s), " s");
    row("GELU fwd+bwd (8,3136,512)", gelu_s, torch.as_ref().map(|t| t.gelu_step_s), " s");
    row("ResNet-50 step, batch 8 × 224²", resnet_s, torch.as_ref().map(|t| t.resnet50_step_s), " s");
    row("tiny ResNet step, batch 32 × 32²", tiny_s, torch.as_ref().map(|t| t.tiny_resnet_step_s), " s");
    println!("(ratio = dmlp / PyTorch: for GFLOP/s above 1 is faster, for seconds below 1 is faster)");
    if args.json {
        let mut json = serde_json::json!({
            "threads": threads,
            "convs": args.convs.name(),
            "conv_fwd_bwd_gflops": conv_gflops,
            "batch_norm_step_s": bn_s,
            "gelu_step_s": gelu_s,
            "resnet50_step_s": resnet_s,
            "tiny_resnet_step_s": tiny_s,
        });
        if let Some(t) = &torch {
            json["torch_version"] = t.torch_version.clone().into();
            json["torch_conv_fwd_bwd_gflops"] = torch_conv_gflops.into();
            json["torch_batch_norm_step_s"] = t.batch_norm_step_s.into();
            json["torch_gelu_step_s"] = t.gelu_step_s.into();
            json["torch_resnet50_step_s"] = t.resnet50_step_s.into();
            json["torch_tiny_resnet_step_s"] = t.tiny_resnet_step_s.into();
        }
        println!("{json}");
    }
    Ok(ExitCode::SUCCESS)
}

/// PyTorch's totals over the same shapes, counted as dmlp's are.
fn torch_conv_totals(convs: &[ConvTiming], torch: &TorchOps) -> (f64, f64) {
    conv_totals(convs.iter().zip(&torch.conv_shape_s).map(|(c, &seconds)| (&c.shape, seconds, c.flops)))
}

/// One line per shape: dmlp's time (of it the forward's) and GFLOP/s, and PyTorch's beside
/// them when it ran.
fn print_conv_shapes(convs: &[ConvTiming], torch: Option<&TorchOps>) {
    eprintln!("  conv shape (batch 8)          count  dmlp ms (fwd)  GFLOP/s  torch ms (fwd)  GFLOP/s  ratio");
    for (idx, c) in convs.iter().enumerate() {
        let (cin, cout, k, s, _, size, count) = c.shape;
        let ms = |total: f64, forward: f64| format!("{:>7.2} ({:>5.2})", total * 1e3, forward * 1e3);
        let ours = format!("{} {:>8.1}", ms(c.seconds, c.forward), c.flops / c.seconds / 1e9);
        let theirs = match torch.map(|t| (t.conv_shape_s.get(idx), t.conv_shape_forward_s.get(idx))) {
            Some((Some(&t), Some(&f))) => {
                format!(" {} {:>8.1} {:>5.2}×", ms(t, f), c.flops / t / 1e9, c.seconds / t)
            }
            _ => String::new(),
        };
        eprintln!("  {cin:>4}→{cout:<4} {k}×{k}/{s} @{size:<3}         ×{count:<4} {ours}{theirs}");
    }
}

fn run_torch(
    python: &Path,
    threads: usize,
    (iters, shape_iters): (usize, usize),
    shapes: &[ConvShape],
) -> anyhow::Result<TorchOps> {
    let args = [
        ("--threads", threads.to_string()),
        ("--iters", iters.to_string()),
        ("--shape-iters", shape_iters.to_string()),
        ("--shapes", serde_json::to_string(shapes)?),
    ];
    let args: Vec<String> = args.into_iter().flat_map(|(flag, value)| [flag.to_string(), value]).collect();
    let torch: TorchOps = crate::bench::run_python_json(python, "bench_ops.py", &args)?;
    anyhow::ensure!(
        [&torch.conv_shape_s, &torch.conv_shape_forward_s]
            .iter()
            .all(|times| times.len() == shapes.len() && times.iter().all(|t| t.is_finite() && *t > 0.0)),
        "bench_ops.py returned {} and {} convolution times, not one positive time per shape ({})",
        torch.conv_shape_s.len(),
        torch.conv_shape_forward_s.len(),
        shapes.len()
    );
    Ok(torch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every convolution of each network, counted: ResNet-50 has 53; SK-Res2Net-101 238 (three in
    /// the stem, seven per block over 33 blocks, one downsample per stage), as many as PyTorch's
    /// profile of its step calls `mkldnn_convolution`.
    #[test]
    fn shape_lists_count_every_convolution() {
        let count = |set: ConvSet| set.shapes().iter().map(|shape| shape.6).sum::<usize>();
        assert_eq!(count(ConvSet::Resnet50), 53);
        assert_eq!(count(ConvSet::Sk2res2net101), 238);
        // The last stage's 3×3 convolutions run at 7×7 over 208 channels, the width of 512 planes.
        assert!(sk2res2net101_convs().contains(&(208, 208, 3, 1, 1, 7, 6)));
    }
}
