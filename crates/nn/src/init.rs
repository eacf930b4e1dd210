//! PyTorch's initialisations, as data for `VarBuilder::get_with_hints`.

use candle_nn::Init;

/// PyTorch's default for `nn.Linear` and `nn.Conv2d` weights and biases:
/// `kaiming_uniform_(a=√5)`, i.e. U(−1/√fan_in, 1/√fan_in) (`torch/nn/modules/linear.py`,
/// `reset_parameters`). The bias uses the same bound.
pub fn pytorch_default(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

/// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: N(0, 2/fan_out), what torchvision's
/// ResNet uses for every convolution (`fan_out = out_channels · k_h · k_w`).
pub fn kaiming_normal_fan_out(fan_out: usize) -> Init {
    Init::Randn { mean: 0.0, stdev: (2.0 / fan_out.max(1) as f64).sqrt() }
}
