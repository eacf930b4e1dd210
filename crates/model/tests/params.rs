//! Parameter counts pinned to the spec's §6 figures (computed there from the reference's layer
//! shapes; the formulas are in the spec).

use candle_core::Device;
use dmlp_backbones::{BackbonePreset, BackboneSpec};
use dmlp_fusion::{FusionConfig, FusionKind};
use dmlp_geo::Metadata;
use dmlp_model::{Classifier, ModelConfig, ModelDType, ParamCounts};

fn counts(backbone: BackbonePreset, fusion: Option<FusionConfig>, num_classes: usize) -> ParamCounts {
    let config = ModelConfig {
        pretrained: None,
        backbone: Some(BackboneSpec::Preset(backbone)),
        feature_dim: None,
        num_classes,
        metadata: fusion.as_ref().map(|_| Metadata::GeoTemporal),
        fusion,
        dtype: ModelDType::F32,
    };
    Classifier::new_zeroed(&config, &Device::Cpu).unwrap().param_counts()
}

fn head_counts(kind: FusionKind, d: usize, h: usize, n: usize) -> ParamCounts {
    let fusion = FusionConfig { mlp_d: d, mlp_h: h, mlp_n: n, ..FusionConfig::with_defaults(kind) };
    let config = ModelConfig {
        pretrained: None,
        backbone: None,
        feature_dim: Some(2048),
        num_classes: 100,
        metadata: Some(Metadata::GeoTemporal),
        fusion: Some(fusion),
        dtype: ModelDType::F32,
    };
    Classifier::new_zeroed(&config, &Device::Cpu).unwrap().param_counts()
}

#[test]
fn resnet50_with_dynamic_mlp_c_matches_the_spec() {
    let c = counts(BackbonePreset::Resnet50, Some(FusionConfig::with_defaults(FusionKind::DynamicMlpC)), 8142);
    assert_eq!(c.backbone, 23_508_032);
    assert_eq!(c.loc_net, 593_664);
    assert_eq!(c.loc_att, 6_775_232);
    assert_eq!(c.fc, 16_682_958);
    // Spec §6 totals: 47.56 M for R50 + DMLP-C on iNat18.
    assert_eq!((c.total() as f64 / 1e4).round() / 100.0, 47.56);
}

#[test]
fn sk2res2net101_backbone_matches_the_spec() {
    let c = counts(BackbonePreset::Sk2res2net101, None, 100);
    assert_eq!(c.backbone, 46_331_777);
    assert_eq!(c.fc, 204_900);
    assert_eq!((c.loc_net, c.loc_att), (0, 0));
}

#[test]
fn fusion_versions_and_depths_match_the_spec() {
    assert_eq!(head_counts(FusionKind::DynamicMlpB, 256, 64, 2).loc_att, 6_623_680);
    assert_eq!(head_counts(FusionKind::DynamicMlpA, 256, 64, 2).loc_att, 9_476_992);
    // Spec §6 head totals (FCNet + fusion) in millions for the d, h, N ablations of version C.
    let head_m = |c: ParamCounts| ((c.loc_net + c.loc_att) as f64 / 1e4).round() / 100.0;
    assert_eq!(head_m(head_counts(FusionKind::DynamicMlpC, 64, 64, 2)), 1.40);
    assert_eq!(head_m(head_counts(FusionKind::DynamicMlpC, 256, 16, 2)), 3.18);
    assert_eq!(head_m(head_counts(FusionKind::DynamicMlpC, 256, 64, 1)), 18.89);
    // The spec prints 7.69 M here, but its own block formulas give 7,368,896 + 315,840 (one more
    // C block 64 → 64 with ℓ = 256) = 7,684,736, i.e. 7.68 M; the N = 3 structure itself is
    // checked key for key by the fusion-c-n3 parity fixture.
    let c3 = head_counts(FusionKind::DynamicMlpC, 256, 64, 3);
    assert_eq!(c3.loc_net + c3.loc_att, 7_684_736);
    assert_eq!(head_m(head_counts(FusionKind::DynamicMlpB, 256, 64, 3)), 7.51);
    assert_eq!(head_m(head_counts(FusionKind::DynamicMlpB, 512, 64, 2)), 22.80);
    assert_eq!(head_m(head_counts(FusionKind::DynamicMlpA, 256, 128, 2)), 18.49);
}

#[test]
fn matched_baselines_land_within_two_percent_of_dynamic_mlp_c() {
    for (d, h, n) in [(256, 64, 2), (256, 64, 1), (128, 32, 3), (64, 64, 2), (512, 64, 2), (256, 16, 4)] {
        let reference = head_counts(FusionKind::DynamicMlpC, d, h, n).loc_att as f64;
        for kind in [FusionKind::ConcatMatched, FusionKind::AddMatched, FusionKind::MulMatched] {
            let got = head_counts(kind, d, h, n).loc_att as f64;
            let off = (got - reference).abs() / reference;
            assert!(off < 0.02, "{kind} d{d} h{h} n{n}: {got} vs {reference} ({:.2}%)", off * 100.0);
        }
    }
}

#[test]
fn resnet_presets_have_torchvision_counts() {
    // torchvision's figures with a 1000-class fc: resnet18 11,689,512; resnet34 21,797,672;
    // resnet101 44,549,160; resnet152 60,192,808.
    for (preset, total) in [
        (BackbonePreset::Resnet18, 11_689_512),
        (BackbonePreset::Resnet34, 21_797_672),
        (BackbonePreset::Resnet101, 44_549_160),
        (BackbonePreset::Resnet152, 60_192_808),
    ] {
        assert_eq!(counts(preset, None, 1000).total(), total, "{preset}");
    }
}

/// `loc_att` of a fusion module with d = 256, h = 64, N = 2 on 2048-d features: `conv1`, `conv3`,
/// `norm3`, and the two blocks (256 → 64) and (64 → 256), each counted by `block(i, o)`.
fn loc_att_with(block: impl Fn(usize, usize) -> usize) -> usize {
    let linear = |i: usize, o: usize| i * o + o;
    linear(2048, 256) + linear(256, 2048) + 2 * 2048 + block(256, 64) + block(64, 256)
}

#[test]
fn attention_and_dagger_heads_have_the_documented_layers() {
    let l = 256; // location features
    let linear = |i: usize, o: usize| i * o + o;
    let tail = |o: usize| 2 * o + (o * o + 2 * o); // br (LN) + conv3 (Linear without bias, LN)
    let k = dmlp_fusion::attention::KEY_WIDTH;
    let attention = |query_in: usize, kv_in: usize| {
        move |i: usize, o: usize| {
            linear(query_in_of(query_in, i, l), i)
                + linear(i, k)
                + linear(kv_in_of(kv_in, i, l), i)
                + linear(i, i * o)
                + linear(kv_in_of(kv_in, i, l), i)
                + linear(i, k * i)
                + 4 * k // qnorm and knorm
                + tail(o)
        }
    };
    // 0: the image vector (i wide), 1: the location features (ℓ), 2: both.
    fn query_in_of(which: usize, i: usize, l: usize) -> usize {
        [i, l, i + l][which]
    }
    fn kv_in_of(which: usize, i: usize, l: usize) -> usize {
        [i, l, i + l][which]
    }
    assert_eq!(head_counts(FusionKind::AttentionImageQuery, 256, 64, 2).loc_att, loc_att_with(attention(0, 1)));
    assert_eq!(head_counts(FusionKind::AttentionLocationQuery, 256, 64, 2).loc_att, loc_att_with(attention(1, 0)));
    assert_eq!(head_counts(FusionKind::AttentionConcat, 256, 64, 2).loc_att, loc_att_with(attention(2, 2)));
    let dagger = |proj: bool| {
        move |i: usize, o: usize| {
            2 * (linear(i + l, i) + linear(i, o)) + if proj { linear(2 * o, o) } else { 0 } + tail(o)
        }
    };
    assert_eq!(head_counts(FusionKind::ConcatDagger, 256, 64, 2).loc_att, loc_att_with(dagger(true)));
    assert_eq!(head_counts(FusionKind::AddDagger, 256, 64, 2).loc_att, loc_att_with(dagger(false)));
    assert_eq!(head_counts(FusionKind::MulDagger, 256, 64, 2).loc_att, loc_att_with(dagger(false)));
    // Against Dynamic MLP-C: the image-query attention is 0.70 M larger, as in the paper's
    // Table S3 (48.1 M against 47.4 M).
    let c = head_counts(FusionKind::DynamicMlpC, 256, 64, 2).loc_att;
    let extra = head_counts(FusionKind::AttentionImageQuery, 256, 64, 2).loc_att - c;
    assert!((690_000..=710_000).contains(&extra), "{extra}");
}

/// timm 1.0.31's counts (`sum(p.numel())` of `create_model(name, num_classes=0)`), the PVT
/// authors' for PVT v1, PyTorch's for the BoTNet reconstruction.
#[test]
fn transformer_presets_match_timm() {
    for (preset, timm) in [
        (BackbonePreset::SwinTiny, 27_519_354),
        (BackbonePreset::PvtV2B0, 3_409_760),
        (BackbonePreset::PvtV2B2, 24_849_856),
        (BackbonePreset::PvtV2B2Li, 22_040_512),
        (BackbonePreset::SwinLarge224, 194_995_476),
        (BackbonePreset::SwinLarge384, 195_198_516),
        // The PVT authors' classification code (whai362/PVT, `pvt_tiny`, `pvt_large`).
        (BackbonePreset::PvtTiny, 12_716_288),
        (BackbonePreset::PvtLarge, 60_856_320),
        // BoTNet, a reconstruction: torchvision's blocks with timm's BottleneckAttn in the last
        // stage, built in PyTorch (`botnet()` in xtask/python/make_transformer_parity.py).
        (BackbonePreset::Botnet50, 18_803_008),
        (BackbonePreset::Botnet152, 53_438_784),
    ] {
        assert_eq!(counts(preset, None, 10).backbone, timm, "{preset}");
    }
}
