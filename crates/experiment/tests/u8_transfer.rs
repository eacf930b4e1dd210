//! Images may cross to the device as u8 pixels and be normalised there (the GPU default): the
//! batches equal the host-normalised ones bit for bit, for training views (with RandAugment and
//! bicubic resizing), multi-scale ten-crop evaluation views, and not at all with random erasing
//! (its noise is written after normalisation, so those batches stay f32).

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use dmlp_datasets::synth::{SynthConfig, generate};
use dmlp_eval::BatchSource;
use dmlp_experiment::{LoaderSource, RunConfig, read_splits};

fn config(dir: &Path, data: &Path, data_extra: &str) -> RunConfig {
    let text = format!(
        r#"
[model]
backbone = {{ type = "resnet", block = "basic", layers = [1, 1, 1, 1], width = 8 }}
num_classes = 4
metadata = "geo_temporal"

[model.fusion]
type = "dynamic_mlp_c"
mlp_d = 16
mlp_h = 8

[data]
root = "{}"
image_size = 16
workers = 2
{data_extra}

[train]
epochs = 1
batch_size = 6
lr = 0.05
seed = 5
"#,
        data.display()
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    RunConfig::from_file(&path, &[]).unwrap()
}

fn values(source: &LoaderSource) -> Vec<Vec<f32>> {
    source
        .epoch(1)
        .unwrap()
        .map(|b| {
            let b = b.unwrap();
            b.views.iter().flat_map(|v| v.images.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
        })
        .collect()
}

#[test]
fn u8_pixels_normalised_on_the_device_equal_the_hosts_floats() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let synth = SynthConfig {
        groups: 1,
        per_group: 2,
        distinct: 2,
        train_per_class: 4,
        val_per_class: 3,
        image_size: 24,
        seed: 3,
        with_dates: true,
        missing_fraction: 0.0,
    };
    generate(&synth, &data).unwrap();
    let augmented =
        "interpolation = \"bicubic\"\nrand_augment = \"rand-m9-mstd0.5-inc1\"\ntest_scales = [16, 20]\nten_crop = true";
    let run = config(dir.path(), &data, augmented);
    let (train, val) = read_splits(&run).unwrap();
    let (train, val) = (Arc::new(train), Arc::new(val));
    let check = |host: LoaderSource, mut on_device: LoaderSource| {
        assert!(!host.pixels_as_u8(), "the CPU default is host normalisation");
        on_device.set_pixels_as_u8(true);
        assert!(on_device.pixels_as_u8());
        let (a, b) = (values(&host), values(&on_device));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.len(), y.len());
            assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), "u8 transfer changed a value");
        }
    };
    let train_source = || LoaderSource::train(train.clone(), &run, Device::Cpu).unwrap();
    check(train_source(), train_source());
    let val_source = || LoaderSource::eval(val.clone(), &run, Device::Cpu).unwrap();
    check(val_source(), val_source());
    // Random erasing writes noise after normalisation: such training views stay f32.
    let erasing = config(dir.path(), &data, "random_erasing = 0.25");
    let mut source = LoaderSource::train(train, &erasing, Device::Cpu).unwrap();
    source.set_pixels_as_u8(true);
    assert!(!source.pixels_as_u8());
}
