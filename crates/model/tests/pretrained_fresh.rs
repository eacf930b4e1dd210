//! BoTNet starts from a torchvision ResNet of its depths: every tensor but the attention's comes
//! from the file, the attention keeps its initialisation and the report says so; a timm
//! transformer's `head.*` is a classifier head, never loaded.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use dmlp_backbones::{BackboneSpec, BlockKind, CustomBackbone};
use dmlp_model::{Classifier, ModelConfig, ModelDType, SkipReason, WeightsFile};

fn classifier(backbone: CustomBackbone) -> Classifier {
    let config = ModelConfig {
        pretrained: None,
        backbone: Some(BackboneSpec::Custom(backbone)),
        feature_dim: None,
        num_classes: 5,
        metadata: None,
        fusion: None,
        dtype: ModelDType::F32,
    };
    Classifier::new(&config, 3, &Device::Cpu).unwrap()
}

fn weights_of(model: &Classifier) -> WeightsFile {
    let tensors: BTreeMap<String, Tensor> =
        model.store().vars().iter().map(|(name, var)| (name.clone(), var.as_tensor().copy().unwrap())).collect();
    WeightsFile { path: "resnet.safetensors".into(), tensors, epoch: None }
}

#[test]
fn botnet_takes_a_resnet_checkpoint_and_keeps_its_attention_fresh() {
    let layers = vec![1, 1, 1, 2];
    let resnet = classifier(CustomBackbone::Resnet { block: BlockKind::Bottleneck, layers: layers.clone(), width: 8 });
    let botnet = classifier(CustomBackbone::Botnet { layers, width: 8, heads: 2, img_size: 64 });
    let file = weights_of(&resnet);
    let load = botnet.load_pretrained_backbone(&file).unwrap();
    // Two attention blocks: qkv and two relative tables each.
    assert_eq!(load.fresh.len(), 6, "{:?}", load.fresh);
    assert!(load.fresh.iter().all(|name| name.starts_with("layer4.") && name.contains(".self_attn.")));
    // The ResNet's 3×3 convolutions of that stage are what the attention replaces.
    for name in ["layer4.0.conv2.weight", "layer4.1.conv2.weight"] {
        assert_eq!(load.skipped.get(name), Some(&SkipReason::NotInBackbone), "{name}");
    }
    assert_eq!(load.skipped.get("fc.weight"), Some(&SkipReason::ClassifierHead));
    let backbone_total = botnet.backbone_names().unwrap().len();
    assert_eq!(load.loaded + load.fresh.len(), backbone_total);
    assert!(load.summary().contains("left at their initialisation"), "{}", load.summary());
    // Taken tensors equal the file's.
    let stem = botnet.store().vars().iter().find(|(n, _)| n.as_str() == "layer4.0.conv1.weight").unwrap().1.clone();
    let diff = (stem.as_tensor() - &file.tensors["layer4.0.conv1.weight"]).unwrap().abs().unwrap();
    assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);

    // A plain ResNet still needs every tensor: the ResNet file minus one fails.
    let mut partial = weights_of(&resnet);
    partial.tensors.remove("layer1.0.conv2.weight");
    assert!(resnet.load_pretrained_backbone(&partial).is_err());
}

#[test]
fn a_timm_head_is_never_loaded() {
    let pvt = CustomBackbone::PvtV2 {
        embed_dims: vec![8, 16],
        depths: vec![1, 1],
        num_heads: vec![1, 2],
        sr_ratios: vec![2, 1],
        mlp_ratios: vec![4.0, 4.0],
        linear: false,
        drop_path_rate: 0.0,
    };
    let model = classifier(pvt);
    let mut file = weights_of(&model);
    file.tensors.remove("fc.weight");
    file.tensors.remove("fc.bias");
    file.tensors
        .insert("head.weight".into(), Tensor::zeros((1000, 16), candle_core::DType::F32, &Device::Cpu).unwrap());
    let load = model.load_pretrained_backbone(&file).unwrap();
    assert_eq!(load.skipped.get("head.weight"), Some(&SkipReason::ClassifierHead));
    assert!(load.fresh.is_empty());
}
