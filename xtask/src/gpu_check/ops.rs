//! Every op of `dmlp-nn`, and whole ResNet and SK-Res2Net training steps, on a device against
//! the CPU custom ops: the same seeded weights and inputs, values and gradients. On CUDA this is
//! the CPU-vs-CUDA check; with `--device cpu` it compares the CPU ops with the device-generic path
//! forced on the CPU (what CUDA runs), which is how the check itself is tested without a GPU.

use candle_core::{DType, Device, Module, ModuleT, Tensor, Var};
use dmlp_backbones::{BackboneSpec, BlockKind, CustomBackbone};
use dmlp_fusion::{FusionConfig, FusionKind};
use dmlp_geo::Metadata;
use dmlp_model::{Classifier, ModelConfig};
use dmlp_nn::{
    AvgPool2d, Conv2dConfig, MaxPool2d, ParamStore, batch_norm, batched_vecmat, channel_blend, conv2d,
    generated_projection, global_avg_pool, init, layer_norm, linear, pool_mix, with_generic_ops,
};

/// One compared tensor.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct OpCheck {
    pub(crate) op: String,
    pub(crate) tensor: String,
    pub(crate) rel_l2: f64,
    pub(crate) tol: f64,
    /// Why the op gave no value on the device (an error or a panic), when it gave none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

impl OpCheck {
    pub(crate) fn ok(&self) -> bool {
        self.error.is_none() && self.rel_l2 <= self.tol
    }

    /// A case that failed on the device: one failed check naming why, and the others go on.
    fn failed(op: &str, error: &anyhow::Error) -> Self {
        OpCheck {
            op: op.into(),
            tensor: "(none)".into(),
            rel_l2: f64::INFINITY,
            tol: TOL,
            error: Some(format!("{error:#}")),
        }
    }
}

type Op = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor>>;

/// An op built under a store on a device, and its input's shape.
struct OpCase {
    name: &'static str,
    input: Vec<usize>,
    /// The bound on each tensor's relative L2 distance from the CPU's.
    tol: f64,
    build: fn(&ParamStore, &Device) -> candle_core::Result<Op>,
}

/// f32 on both sides, summed in other orders: the generic-path tests' bound.
const TOL: f64 = 2e-4;

/// bf16 data on both sides (8 significant bits), computed in other orders.
const BF16_TOL: f64 = 2e-2;

fn smooth(shape: &[usize], seed: f64, device: &Device) -> candle_core::Result<Tensor> {
    let n: usize = shape.iter().product();
    let data: Vec<f32> =
        (0..n).map(|i| (((i as f64 + seed) * 12.9898).sin() * 43758.5453).fract() as f32 * 2.0).collect();
    Tensor::from_vec(data, shape, device)
}

fn values(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_device(&Device::Cpu)?.to_vec1()
}

fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    // A tensor that is zero by construction is float noise on both sides: held absolutely.
    if norm > 1e-6 { diff / norm } else { diff }
}

fn cases() -> Vec<OpCase> {
    fn cfg(stride: usize, padding: usize, groups: usize) -> Conv2dConfig {
        Conv2dConfig { groups, ..Conv2dConfig::new(stride, padding) }
    }
    vec![
        OpCase {
            name: "conv2d 7×7/2 pad 3, non-square",
            input: vec![2, 3, 23, 18],
            tol: TOL,
            build: |s, d| {
                let c = conv2d(3, 8, 7, cfg(2, 3, 1), false, init::pytorch_default(147), s.var_builder(DType::F32, d))?;
                Ok(Box::new(move |x| c.forward(x)))
            },
        },
        OpCase {
            name: "conv2d 3×3/2 grouped, with bias",
            input: vec![2, 8, 13, 10],
            tol: TOL,
            build: |s, d| {
                let c = conv2d(8, 8, 3, cfg(2, 1, 4), true, init::pytorch_default(18), s.var_builder(DType::F32, d))?;
                Ok(Box::new(move |x| c.forward(x)))
            },
        },
        OpCase {
            name: "max pool 3/2 pad 1",
            input: vec![2, 4, 13, 10],
            tol: TOL,
            build: |_, _| {
                let p = MaxPool2d { kernel: 3, stride: 2, padding: 1, ceil_mode: false };
                Ok(Box::new(move |x| p.forward(x)))
            },
        },
        OpCase {
            name: "avg pool 3/1 pad 1 (count_include_pad=False)",
            input: vec![2, 4, 9, 7],
            tol: TOL,
            build: |_, _| {
                let p = AvgPool2d { kernel: 3, stride: 1, padding: 1, ceil_mode: false, count_include_pad: false };
                Ok(Box::new(move |x| p.forward(x)))
            },
        },
        OpCase {
            name: "avg pool 2/2 ceil_mode",
            input: vec![2, 4, 9, 7],
            tol: TOL,
            build: |_, _| {
                let p = AvgPool2d { kernel: 2, stride: 2, padding: 0, ceil_mode: true, count_include_pad: false };
                Ok(Box::new(move |x| p.forward(x)))
            },
        },
        OpCase {
            name: "batch norm + relu (training)",
            input: vec![4, 5, 6, 7],
            tol: TOL,
            build: |s, d| {
                let bn = batch_norm(5, s.var_builder(DType::F32, d).pp("bn"))?;
                Ok(Box::new(move |x| bn.forward_relu_t(x, true)))
            },
        },
        OpCase {
            // On CUDA bf16 data in cuDNN (or converted to f32 where cuDNN refuses it: gpu-check's
            // `batch_norm_half` says which), γ, β and the statistics f32, as under autocast.
            name: "batch norm (training, bf16 data)",
            input: vec![4, 5, 6, 7],
            tol: BF16_TOL,
            build: |s, d| {
                let bn = batch_norm(5, s.var_builder(DType::F32, d).pp("bn"))?;
                Ok(Box::new(move |x| bn.forward_t(&x.to_dtype(DType::BF16)?, true)?.to_dtype(DType::F32)))
            },
        },
        OpCase {
            name: "batch norm (evaluation)",
            input: vec![4, 5, 6, 7],
            tol: TOL,
            build: |s, d| {
                let bn = batch_norm(5, s.var_builder(DType::F32, d).pp("bn"))?;
                Ok(Box::new(move |x| bn.forward_t(x, false)))
            },
        },
        OpCase {
            name: "layer norm",
            input: vec![6, 32],
            tol: TOL,
            build: |s, d| {
                let ln = layer_norm(32, s.var_builder(DType::F32, d).pp("ln"))?;
                Ok(Box::new(move |x| ln.forward(x)))
            },
        },
        OpCase {
            name: "linear",
            input: vec![6, 32],
            tol: TOL,
            build: |s, d| {
                let fc = linear(32, 12, true, s.var_builder(DType::F32, d).pp("fc"))?;
                Ok(Box::new(move |x| fc.forward(x)))
            },
        },
        OpCase {
            name: "generated projection (Dynamic MLP)",
            input: vec![6, 32],
            tol: TOL,
            build: |s, d| {
                let vb = s.var_builder(DType::F32, d);
                let (h, g) = (linear(32, 12, true, vb.pp("h"))?, linear(12, 8 * 5, true, vb.pp("gen"))?);
                Ok(Box::new(move |x| generated_projection(&x.narrow(1, 0, 8)?, &h.forward(x)?, &g, (8, 5))))
            },
        },
        OpCase {
            name: "batched vecmat",
            input: vec![6, 24],
            tol: TOL,
            build: |_, _| Ok(Box::new(|x| batched_vecmat(&x.narrow(1, 0, 4)?, &x.narrow(1, 4, 20)?))),
        },
        OpCase {
            name: "global avg pool",
            input: vec![2, 3, 7, 5],
            tol: TOL,
            build: |_, _| Ok(Box::new(global_avg_pool)),
        },
        OpCase {
            name: "pool mix (SK gate input)",
            input: vec![2, 6, 5, 7],
            tol: TOL,
            build: |_, _| {
                Ok(Box::new(|x| {
                    let alpha = x.flatten_all()?.narrow(0, 5, 1)?;
                    pool_mix(&x.narrow(1, 0, 3)?, &x.narrow(1, 3, 3)?, &alpha)
                }))
            },
        },
        OpCase {
            name: "channel blend (SK fusion)",
            input: vec![2, 6, 5, 7],
            tol: TOL,
            build: |_, _| {
                Ok(Box::new(|x| {
                    let (a, b) = (x.narrow(1, 0, 3)?, x.narrow(1, 3, 3)?);
                    let s = candle_nn::ops::sigmoid(&b.mean_keepdim(3)?.mean_keepdim(2)?)?;
                    channel_blend(&a, &b, &s)
                }))
            },
        },
    ]
}

/// The op's output, input gradient and every variable's gradient (or value, for buffers).
fn run_case(case: &OpCase, device: &Device, generic: bool) -> anyhow::Result<Vec<(String, Vec<f64>)>> {
    let store = ParamStore::new(7);
    let op = (case.build)(&store, device)?;
    let x = Var::from_tensor(&smooth(&case.input, 0.0, device)?)?;
    let forward = || op(x.as_tensor());
    let y = if generic { with_generic_ops(forward)? } else { forward()? };
    let r = smooth(y.dims(), 0.5, device)?;
    let grads = (&y * r)?.sum_all()?.backward()?;
    let mut out = vec![("output".to_string(), values(&y)?)];
    let gx = grads.get(x.as_tensor()).ok_or_else(|| anyhow::anyhow!("{}: no input gradient", case.name))?;
    out.push(("input gradient".into(), values(gx)?));
    for (name, var) in store.vars() {
        match grads.get(var.as_tensor()) {
            Some(g) => out.push((format!("{name} gradient"), values(g)?)),
            None => out.push((name, values(var.as_tensor())?)),
        }
    }
    Ok(out)
}

/// A training step of a small model: the loss, every gradient and BatchNorm's statistics after.
fn model_step(config: &ModelConfig, device: &Device, generic: bool) -> anyhow::Result<Vec<(String, Vec<f64>)>> {
    let model = Classifier::new(config, 7, device)?;
    let images = smooth(&[4, 3, 37, 29], 0.0, device)?;
    let loc = smooth(&[4, 6], 0.25, device)?;
    let targets = Tensor::new(&[0u32, 3, 1, 4], device)?;
    let loc = config.fusion.as_ref().map(|_| &loc);
    let forward = || -> anyhow::Result<Tensor> {
        let out = model.forward_t(&images, loc, true)?;
        Ok(candle_nn::loss::cross_entropy(&out.logits, &targets)?)
    };
    let loss = if generic { with_generic_ops(forward)? } else { forward()? };
    let grads = loss.backward()?;
    let mut out = vec![("loss".to_string(), values(&loss)?)];
    for (name, var) in model.store().vars() {
        match grads.get(var.as_tensor()) {
            Some(g) => out.push((format!("{name} gradient"), values(g)?)),
            None => out.push((name, values(var.as_tensor())?)),
        }
    }
    Ok(out)
}

fn compare(op: &str, tol: f64, reference: &[(String, Vec<f64>)], got: &[(String, Vec<f64>)]) -> Vec<OpCheck> {
    if reference.len() != got.len() {
        let why = anyhow::anyhow!("{} tensors on the device, {} on the CPU", got.len(), reference.len());
        return vec![OpCheck::failed(op, &why)];
    }
    reference
        .iter()
        .zip(got)
        .map(|((tensor, a), (_, b))| OpCheck {
            op: op.into(),
            tensor: tensor.clone(),
            rel_l2: rel_l2(b, a),
            tol,
            error: None,
        })
        .collect()
}

/// The device's result against the CPU's; a device that fails (an error or a panic) is one
/// failed check, so the other cases still run. The CPU reference failing is the check's own bug.
fn compare_on_device(
    op: &str,
    tol: f64,
    reference: &[(String, Vec<f64>)],
    got: impl FnOnce() -> anyhow::Result<Vec<(String, Vec<f64>)>>,
) -> Vec<OpCheck> {
    match super::caught(got) {
        Ok(got) => compare(op, tol, reference, &got),
        Err(error) => vec![OpCheck::failed(op, &error)],
    }
}

/// Three SGD steps (momentum 0.9, weight decay 1e-4, with and without Nesterov) of three
/// parameters on `device`: the parameters and momentum buffers after. On CUDA these are dmlp's
/// in-place kernels (two per parameter at the first step, then one launch for all, whose
/// blocks take 16 Ki elements each: `big` spans three, the last one partly), on the CPU the
/// update composed from tensor ops.
fn sgd_steps(device: &Device, nesterov: bool) -> anyhow::Result<Vec<(String, Vec<f64>)>> {
    use dmlp_train::{Sgd, SgdConfig};
    let w = candle_core::Var::from_tensor(&smooth(&[7, 5], 0.5, device)?)?;
    let b = candle_core::Var::from_tensor(&smooth(&[13], 1.5, device)?)?;
    let big = candle_core::Var::from_tensor(&smooth(&[41, 1000], 4.5, device)?)?;
    let (cw, cb, cbig) =
        (smooth(&[7, 5], 2.5, device)?, smooth(&[13], 3.5, device)?, smooth(&[41, 1000], 5.5, device)?);
    let config = SgdConfig { momentum: 0.9, weight_decay: 1e-4, nesterov };
    let vars = vec![("w".into(), w.clone()), ("b".into(), b.clone()), ("big".into(), big.clone())];
    let mut sgd = Sgd::new(vars, config);
    for step in 0..3 {
        let loss = ((w.as_tensor() * &cw)?.sum_all()? + (b.as_tensor().sqr()? * &cb)?.sum_all()?)?;
        let loss = (loss + (big.as_tensor().sqr()? * &cbig)?.sum_all()?)?;
        sgd.step(&loss.backward()?, 0.1 / (step + 1) as f64)?;
    }
    let values = |t: &Tensor| -> anyhow::Result<Vec<f64>> { Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?) };
    let mut out = vec![
        ("w".to_string(), values(w.as_tensor())?),
        ("b".to_string(), values(b.as_tensor())?),
        ("big".to_string(), values(big.as_tensor())?),
    ];
    for name in ["w", "b", "big"] {
        let buffer =
            sgd.momentum_buffers().get(name).ok_or_else(|| anyhow::anyhow!("no momentum buffer for {name}"))?;
        out.push((format!("{name} momentum"), values(buffer)?));
    }
    Ok(out)
}

/// Seven batches of bytes through `dmlp_nn::Uploader`, read back after the last: on CUDA through
/// page-locked buffers, each rewritten two uploads of its length after its last copy, with a
/// large product queued before each upload so that the device runs behind the host (a buffer
/// rewritten before its copy ran would show the next batch's bytes). One upload of another
/// length sits between them. On the CPU, `Tensor::from_vec`. Each product (4096³, 137 GFLOP,
/// milliseconds on an H200 in f32) outlasts the host's write of the next buffer many times over;
/// session 19's staging, which relied on cudarc's own event (never recorded with event tracking
/// off), would fail here.
fn uploads(device: &Device) -> anyhow::Result<Vec<(String, Vec<f64>)>> {
    let uploader = dmlp_nn::Uploader::new(device);
    let lag = if device.is_cpu() { None } else { Some(Tensor::ones((4096, 4096), DType::F32, device)?) };
    let mut uploaded = Vec::new();
    for (k, len) in [600_000usize, 600_000, 600_000, 100, 600_000, 600_000, 600_000].into_iter().enumerate() {
        if let Some(lag) = &lag {
            drop(lag.matmul(lag)?);
        }
        let bytes: Vec<u8> = (0..len).map(|i| ((i * 31 + k * 17) % 251) as u8).collect();
        uploaded.push((format!("upload {k} ({len} bytes)"), uploader.u8(bytes, len)?));
    }
    if device.is_cuda()
        && let Err(why) = uploader.staging_status()
    {
        anyhow::bail!("{why}");
    }
    uploaded.into_iter().map(|(name, t)| Ok((name, t.to_vec1::<u8>()?.into_iter().map(f64::from).collect()))).collect()
}

/// Every op and both model steps on `target` against the CPU custom ops: on the device-generic
/// path when `generic` (always on the CPU), otherwise on the device's own (cuDNN's convolutions
/// on CUDA where it is loaded).
pub(crate) fn check(target: &Device, generic: bool) -> anyhow::Result<Vec<OpCheck>> {
    let generic = generic || target.is_cpu();
    let mut checks = Vec::new();
    for case in cases() {
        let reference = run_case(&case, &Device::Cpu, false)?;
        checks.extend(compare_on_device(case.name, case.tol, &reference, || run_case(&case, target, generic)));
    }
    let resnet = CustomBackbone::Resnet { block: BlockKind::Bottleneck, layers: vec![2, 1, 1, 1], width: 8 };
    let sk = CustomBackbone::Sk2res2net { layers: vec![2, 1, 1, 1], width: 16 };
    for (name, backbone) in [("ResNet step (image only)", resnet), ("SK-Res2Net + Dynamic MLP-C step", sk)] {
        let fused = name.contains("Dynamic");
        let config = ModelConfig {
            metadata: fused.then_some(Metadata::GeoTemporal),
            fusion: fused.then(|| FusionConfig {
                mlp_d: 16,
                mlp_h: 8,
                mlp_n: 2,
                ..FusionConfig::with_defaults(FusionKind::DynamicMlpC)
            }),
            ..ModelConfig::image_only(BackboneSpec::Custom(backbone), 5)
        };
        let reference = model_step(&config, &Device::Cpu, false)?;
        checks.extend(compare_on_device(name, TOL, &reference, || model_step(&config, target, generic)));
    }
    for (name, nesterov) in [("SGD, 3 steps", false), ("SGD (Nesterov), 3 steps", true)] {
        let reference = sgd_steps(&Device::Cpu, nesterov)?;
        let run = || sgd_steps(target, nesterov);
        checks.extend(compare_on_device(name, TOL, &reference, || {
            if generic { dmlp_nn::with_generic_ops(run) } else { run() }
        }));
    }
    let reference = uploads(&Device::Cpu)?;
    checks.extend(compare_on_device("uploads (page-locked staging)", 0.0, &reference, || uploads(target)));
    Ok(checks)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_generic_path_on_the_cpu_passes_the_device_check() {
        let checks = super::check(&candle_core::Device::Cpu, true).unwrap();
        assert!(checks.len() > 100, "{} checks", checks.len());
        let failed: Vec<_> = checks.iter().filter(|c| !c.ok()).collect();
        assert!(failed.is_empty(), "{failed:#?}");
    }

    #[test]
    fn a_device_that_fails_or_drops_a_tensor_is_a_failed_check_not_an_abort() {
        let reference = vec![("y".to_string(), vec![1.0, 2.0]), ("dx".to_string(), vec![3.0])];
        let good = super::compare_on_device("op", super::TOL, &reference, || Ok(reference.clone()));
        assert!(good.len() == 2 && good.iter().all(super::OpCheck::ok), "{good:?}");
        let error =
            super::compare_on_device("op", super::TOL, &reference, || anyhow::bail!("CUDA_ERROR_ILLEGAL_ADDRESS"));
        let panic = super::compare_on_device("op", super::TOL, &reference, || panic!("cuDNN status 3"));
        let short = super::compare_on_device("op", super::TOL, &reference, || Ok(reference[..1].to_vec()));
        let nan = super::compare_on_device("op", super::TOL, &reference, || {
            Ok(vec![reference[0].clone(), ("dx".into(), vec![f64::NAN])])
        });
        for (checks, why) in [(error, "ILLEGAL_ADDRESS"), (panic, "cuDNN status 3"), (short, "1 tensors on the device")]
        {
            assert_eq!(checks.len(), 1);
            assert!(!checks[0].ok());
            assert!(checks[0].error.as_deref().is_some_and(|e| e.contains(why)), "{checks:?}");
        }
        assert!(nan[0].ok() && !nan[1].ok(), "{nan:?}");
    }
}
